"""Studies: the store on disk and its row schema (:mod:`~cryotune.study.store`), the history
folder (:mod:`~cryotune.study.history`) and the tables read back as pandas
(:mod:`~cryotune.study.tables`). No Ray here: a laptop reads a cluster's study."""
