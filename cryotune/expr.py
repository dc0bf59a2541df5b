"""Query expressions over trial tables: a small grammar of our own, never ``eval``.

An expression is parsed with :mod:`ast` (``mode="eval"``) and checked node by node against
the grammar below; anything else is a one-line :class:`~cryotune.errors.BadInput` naming the
expression and the offending element. A checked expression is evaluated as a pandas boolean
mask over a DataFrame.

The grammar:

- column names: bare (``eps``, ``lambda``), dotted (``config.eps``) or backquoted
  (```config.eps```);
  a ``resolve`` callback maps each name to a column (the default maps ``eps`` to
  ``config.eps`` when only the latter exists);
- literals: numbers (``-1e-3``), strings, ``True``, ``False``, ``None``, ``inf``, ``nan``;
- comparisons ``==``, ``!=``, ``<``, ``<=``, ``>``, ``>=``, chained (``0 < eps <= 0.2``);
- ``in`` / ``not in`` a list or tuple of literals, ``is None`` / ``is not None``;
- ``and``, ``or``, ``not`` and parentheses; a bare boolean column is a condition.

Comparisons are null-safe: a null (NaN, None) on either side compares False, for ``!=`` and
``not in`` too; ``is None`` is how to select nulls. There is no arithmetic, no call, no
attribute other than a dotted column name, no subscript and no ``@name``.

Example::

    from cryotune.expr import mask, parse
    expr = parse("method in ['l2_ae', 'l1_ae'] and 0 < eps <= 0.2")
    frame[mask(frame, expr)]
"""

from __future__ import annotations

import ast
import keyword
import math
import operator
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from cryotune.errors import BadInput

__all__ = ["Expr", "column_resolver", "mask", "parse"]

MAX_LENGTH = 4000  # characters; deeper or longer filters are not a query any more
_FIX = "write comparisons of columns with literals, e.g. \"method == 'l2_ae' and eps > 0\""
_LITERAL_NAMES = {"inf": math.inf, "nan": math.nan}
_COMPARE = {
    ast.Eq: operator.eq, ast.NotEq: operator.ne, ast.Lt: operator.lt,
    ast.LtE: operator.le, ast.Gt: operator.gt, ast.GtE: operator.ge,
}
_SYMBOL = {
    ast.Eq: "==", ast.NotEq: "!=", ast.Lt: "<", ast.LtE: "<=", ast.Gt: ">", ast.GtE: ">=",
    ast.In: "in", ast.NotIn: "not in", ast.Is: "is", ast.IsNot: "is not",
}
_REFUSED = {  # what a refused node is, in words
    ast.Call: "function call", ast.Attribute: "attribute", ast.Subscript: "subscript",
    ast.BinOp: "arithmetic", ast.Lambda: "lambda", ast.IfExp: "conditional expression",
    ast.ListComp: "comprehension", ast.SetComp: "comprehension", ast.DictComp: "comprehension",
    ast.GeneratorExp: "comprehension", ast.Dict: "dict", ast.Set: "set",
    ast.NamedExpr: "assignment", ast.Starred: "starred expression", ast.JoinedStr: "f-string",
    ast.Await: "await", ast.Yield: "yield", ast.YieldFrom: "yield", ast.Slice: "slice",
}


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


@dataclass(frozen=True)
class Expr:
    """A parsed, checked query expression; build with :func:`parse`.

    Attributes:
        text: the expression as written.
        names: the column names it refers to, as written (dotted, without backquotes).
    """

    text: str
    names: tuple[str, ...]
    _tree: ast.Expression = field(repr=False, compare=False)
    _quoted: dict[str, str] = field(repr=False, compare=False)

    def mask(self, frame: pd.DataFrame, resolve: Callable[[str], str] | None = None) -> pd.Series:
        """The boolean mask of ``frame``'s rows that satisfy the expression (see :func:`mask`)."""
        return _Evaluator(self, frame, resolve or column_resolver(frame.columns)).condition(
            self._tree.body)


def _bad(text: str, what: str) -> BadInput:
    return BadInput(_one_line(what), f"in the expression {_one_line(text)!r}", _FIX)


_NAME = re.compile(r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*")
_GRAMMAR_WORDS = {"and", "or", "not", "in", "is", "None", "True", "False"}
_AS_COLUMN = re.compile(r"$|[=!<>),]|(?:is|in|not|and|or)\b")  # what follows a column name


def _swap_backquotes(text: str) -> tuple[str, dict[str, str]]:
    """Replace ```name``` by placeholder identifiers, as also a name that is a Python keyword
    outside the grammar (``lambda``, ``config.lambda``); refuse ``@`` outside string literals."""
    prefix = "_col"
    while prefix in text:
        prefix += "_"
    out, quoted, i, n = [], {}, 0, len(text)
    while i < n:
        c = text[i]
        if c in "'\"":
            j = i + 1
            while j < n and text[j] != c:
                j += 2 if text[j] == "\\" else 1
            out.append(text[i:j + 1])
            i = j + 1
        elif c == "`":
            j = text.find("`", i + 1)
            if j < 0:
                raise _bad(text, "unclosed backquote")
            placeholder = f"{prefix}{len(quoted)}"
            quoted[placeholder] = text[i + 1:j]
            out.append(placeholder)
            i = j + 1
        elif (c.isalpha() or c == "_") and (i == 0 or not (text[i - 1].isalnum()
                                                          or text[i - 1] in "_.")):
            word = _NAME.match(text, i).group(0)
            rest = text[i + len(word):].lstrip()
            if any(keyword.iskeyword(part) and part not in _GRAMMAR_WORDS
                   for part in word.split(".")) and _AS_COLUMN.match(rest):
                placeholder = f"{prefix}{len(quoted)}"
                quoted[placeholder] = word
                out.append(placeholder)
            else:
                out.append(word)
            i += len(word)
        elif c == "@":
            rest = text[i + 1:].split()
            raise _bad(text, f"'@{rest[0] if rest else ''}' is not allowed (no local variables, "
                             "no '@' operator)")
        else:
            out.append(c)
            i += 1
    return "".join(out), quoted


def parse(text: str) -> Expr:
    """Parse and check a query expression.

    Raises:
        BadInput: a syntax error or an element outside the grammar, named in one line.
    """
    if not isinstance(text, str) or not text.strip():
        raise BadInput("empty query expression", "--where", _FIX)
    if len(text) > MAX_LENGTH:
        raise BadInput(f"query expression longer than {MAX_LENGTH} characters",
                       f"in the expression {_one_line(text[:60])!r}...", "write a shorter one")
    source, quoted = _swap_backquotes(text)
    try:
        tree = ast.parse(source.strip(), mode="eval")
    except SyntaxError as err:
        msg = "invalid syntax" if err.msg == "invalid syntax" else f"invalid syntax ({err.msg})"
        raise _bad(text, msg) from None
    except (RecursionError, MemoryError, ValueError):
        raise _bad(text, "expression too deeply nested") from None
    names: list[str] = []
    try:
        _check(tree.body, text, quoted, names, condition=True)
    except RecursionError:
        raise _bad(text, "expression too deeply nested") from None
    return Expr(text=text, names=tuple(dict.fromkeys(names)), _tree=tree, _quoted=quoted)


def _dotted(node: ast.AST) -> str | None:
    """``config.eps`` for an Attribute chain over a Name, else None."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    parts.append(node.id)
    return ".".join(reversed(parts))


def _describe(node: ast.AST, text: str, quoted: dict[str, str]) -> str:
    kind = _REFUSED.get(type(node), type(node).__name__)
    try:
        segment = ast.unparse(node)
    except Exception:  # noqa: BLE001 - only for the message
        segment = ""
    for placeholder, name in quoted.items():
        segment = segment.replace(placeholder, f"`{name}`")
    return f"{kind} {segment!r} is not allowed" if segment else f"{kind} is not allowed"


def _is_literal(node: ast.AST) -> bool:
    if isinstance(node, ast.Constant):
        return node.value is None or isinstance(node.value, (bool, int, float, str))
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        return (isinstance(node.operand, ast.Constant) and not isinstance(node.operand.value, bool)
                and isinstance(node.operand.value, (int, float))) or (
            isinstance(node.operand, ast.Name) and node.operand.id == "inf")
    return isinstance(node, ast.Name) and node.id in _LITERAL_NAMES


def _check(node: ast.AST, text: str, quoted: dict[str, str], names: list[str], *,
           condition: bool) -> None:
    """Raise BadInput unless ``node`` is in the grammar; collect the column names."""
    if isinstance(node, ast.BoolOp):
        for value in node.values:
            _check(value, text, quoted, names, condition=True)
    elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
        _check(node.operand, text, quoted, names, condition=True)
    elif isinstance(node, ast.Compare):
        operands = [node.left, *node.comparators]
        for i, op in enumerate(node.ops):
            left, right = operands[i], operands[i + 1]
            if isinstance(op, (ast.In, ast.NotIn)):
                if not isinstance(right, (ast.List, ast.Tuple)) or not all(
                        _is_literal(e) for e in right.elts):
                    raise _bad(text, f"'{_SYMBOL[type(op)]}' needs a list of literals on its "
                                     f"right, got {ast.unparse(right)!r}")
                _check(left, text, quoted, names, condition=False)
            elif isinstance(op, (ast.Is, ast.IsNot)):
                if not (isinstance(right, ast.Constant) and right.value is None):
                    raise _bad(text, f"'{_SYMBOL[type(op)]}' compares with None only")
                _check(left, text, quoted, names, condition=False)
            elif type(op) in _COMPARE:
                _check(left, text, quoted, names, condition=False)
                _check(right, text, quoted, names, condition=False)
            else:
                raise _bad(text, f"operator {type(op).__name__} is not allowed")
        if len(node.ops) > 1 and any(isinstance(op, (ast.In, ast.NotIn, ast.Is, ast.IsNot))
                                     for op in node.ops):
            raise _bad(text, "'in' and 'is' cannot be chained; join comparisons with 'and'")
    elif _is_literal(node):
        if condition and not (isinstance(node, ast.Constant) and isinstance(node.value, bool)):
            raise _bad(text, f"{ast.unparse(node)!r} is not a condition")
    elif isinstance(node, (ast.Name, ast.Attribute)):
        name = _dotted(node)
        if name is None:
            raise _bad(text, _describe(node, text, quoted))
        names.append(quoted.get(name, name))
    else:
        raise _bad(text, _describe(node, text, quoted))


def column_resolver(columns: Iterable[str]) -> Callable[[str], str]:
    """The default resolver: a column by its exact name, else ``config.<name>``.

    Raises (when called):
        BadInput: no such column; the message lists the known ones.
    """
    columns = [str(c) for c in columns]
    known = set(columns)

    def resolve(name: str) -> str:
        if name in known:
            return name
        if f"config.{name}" in known:
            return f"config.{name}"
        shown = ", ".join(dict.fromkeys(c.removeprefix("config.") for c in columns))
        raise BadInput(f"unknown column {name!r}", "in the query expression",
                       f"known columns: {shown}")

    return resolve


def mask(frame: pd.DataFrame, expr: str | Expr,
         resolve: Callable[[str], str] | None = None) -> pd.Series:
    """The boolean mask (aligned to ``frame.index``) of the rows satisfying ``expr``.

    Args:
        frame: the table, e.g. a study's trials.
        expr: an expression string or a parsed :class:`Expr`.
        resolve: maps a name as written to a column of ``frame``; raises BadInput for an
            unknown one. Default: :func:`column_resolver` over ``frame.columns``.

    Raises:
        BadInput: the expression is outside the grammar, names an unknown column or compares
            values of incompatible types.
    """
    if not isinstance(expr, Expr):
        expr = parse(expr)
    return expr.mask(frame, resolve)


class _Evaluator:
    def __init__(self, expr: Expr, frame: pd.DataFrame, resolve: Callable[[str], str]):
        self.expr, self.frame, self.resolve = expr, frame, resolve

    def _full(self, value: bool) -> pd.Series:
        return pd.Series(bool(value), index=self.frame.index, dtype=bool)

    def condition(self, node: ast.AST) -> pd.Series:
        if isinstance(node, ast.BoolOp):
            masks = [self.condition(v) for v in node.values]
            out = masks[0]
            for m in masks[1:]:
                out = (out & m) if isinstance(node.op, ast.And) else (out | m)
            return out
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
            return ~self.condition(node.operand)
        if isinstance(node, ast.Compare):
            operands = [node.left, *node.comparators]
            out = self._full(True)
            for i, op in enumerate(node.ops):
                out &= self._compare(op, operands[i], operands[i + 1])
            return out
        if isinstance(node, ast.Constant):
            return self._full(node.value)
        column = self.operand(node)
        if not pd.api.types.is_bool_dtype(column.dtype):
            values = column.dropna()
            if not values.map(lambda v: isinstance(v, bool)).all():
                raise _bad(self.expr.text, f"column {self._name(node)!r} is not true/false; "
                                           "compare it with a value")
        return column.fillna(False).astype(bool)

    def _name(self, node: ast.AST) -> str:
        name = _dotted(node) or ""
        return self.expr._quoted.get(name, name)

    def operand(self, node: ast.AST) -> pd.Series | Any:
        if _is_literal(node):
            return _literal(node)
        return self.frame[self.resolve(self._name(node))]

    def _compare(self, op: ast.cmpop, left_node: ast.AST, right_node: ast.AST) -> pd.Series:
        left = self.operand(left_node)
        if isinstance(op, (ast.Is, ast.IsNot)):
            isnull = pd.Series(pd.isna(left), index=self.frame.index) if isinstance(
                left, pd.Series) else self._full(_isnull(left))
            return isnull if isinstance(op, ast.Is) else ~isnull
        if isinstance(op, (ast.In, ast.NotIn)):
            values = [_literal(e) for e in right_node.elts]
            values = [v for v in values if not _isnull(v)]
            if not isinstance(left, pd.Series):
                return self._full(_isnull(left) is False and ((left in values)
                                                              == isinstance(op, ast.In)))
            valid = left.notna()
            hit = left.isin(values)
            return valid & (hit if isinstance(op, ast.In) else ~hit)
        right = self.operand(right_node)
        fn = _COMPARE[type(op)]
        if not isinstance(left, pd.Series) and not isinstance(right, pd.Series):
            try:
                return self._full(not _isnull(left) and not _isnull(right) and fn(left, right))
            except TypeError:
                raise self._type_error(op, left_node, right_node) from None
        valid = self._full(True)
        for side in (left, right):
            valid &= side.notna() if isinstance(side, pd.Series) else not _isnull(side)
        out = self._full(False)
        if not valid.any():
            return out
        lhs = left[valid] if isinstance(left, pd.Series) else left
        rhs = right[valid] if isinstance(right, pd.Series) else right
        try:
            result = fn(lhs, rhs)
        except TypeError:
            raise self._type_error(op, left_node, right_node) from None
        out[valid] = pd.Series(result, index=valid[valid].index).astype(bool)
        return out

    def _type_error(self, op: ast.cmpop, left: ast.AST, right: ast.AST) -> BadInput:
        def show(node):
            return repr(_literal(node)) if _is_literal(node) else f"column {self._name(node)!r}"
        return _bad(self.expr.text, f"cannot compare {show(left)} {_SYMBOL[type(op)]} "
                                    f"{show(right)} (text with a number?)")


def _literal(node: ast.AST) -> Any:
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.Name):
        return _LITERAL_NAMES[node.id]
    value = _literal(node.operand)  # unary minus / plus
    return -value if isinstance(node.op, ast.USub) else value


def _isnull(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))
