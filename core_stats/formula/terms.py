"""A parsed formula as R's ``terms`` and lme4's ``findbars`` see it.

``y ~ a*b + I(x^2) + offset(log(n)) + (1 + x || g) + (1 | c/d)`` becomes

* the response ``y``;
* the fixed terms, ordered as R orders them (by degree, then by appearance):
  ``a``, ``b``, ``I(x^2)``, ``a:b``, with the intercept on;
* the offsets ``log(n)``;
* the random-effects terms, with lme4's expansions: ``||`` splits a bar into
  uncorrelated bars (``(1 | g) + (0 + x | g)``) and ``/`` nests
  (``(1 | d:c) + (1 | c)``).

R's operators: ``a + b`` union, ``a - b`` removal (``- 1`` drops the
intercept, as does ``0``), ``a:b`` interaction, ``a*b = a + b + a:b``,
``a/b = a + a:b``, ``a %in% b``, ``(a + b)^k`` all interactions to order k.
"""

from __future__ import annotations

from dataclasses import dataclass

from core_stats.formula.syntax import (
    BinOp,
    Call,
    FormulaError,
    Name,
    Node,
    Number,
    Paren,
    Unary,
    deparse,
    parse_expression,
)

__all__ = ["TermList", "RandomTerm", "ModelFormula", "parse_formula", "term_label"]

# functions that make a new numeric variable from numeric ones
MATH_FUNCTIONS = {"log": (1, 2), "log2": (1, 1), "log10": (1, 1), "log1p": (1, 1),
                  "exp": (1, 1), "expm1": (1, 1), "sqrt": (1, 1), "abs": (1, 1)}
FACTOR_FUNCTIONS = ("factor", "as.factor")
_REFUSED_FUNCTIONS = {
    "scale": "scale() needs the pooled mean and SD, which no site has: standardise with "
             "known constants, e.g. I((age - 50)/10)",
    "poly": "poly() needs pooled moments: write the raw powers, e.g. age + I(age^2)",
    "ns": "spline bases need pooled knots: write the powers or known cut points",
    "bs": "spline bases need pooled knots: write the powers or known cut points",
    "C": "C() (a contrast other than treatment) is not supported: securefed uses R's default "
         "treatment contrasts",
    "relevel": "relevel() is not supported: name the reference level by recoding the column",
}


@dataclass(frozen=True)
class TermList:
    """Terms of a model-formula right-hand side: variable keys in each term."""

    intercept: bool
    terms: tuple[tuple[str, ...], ...]  # each term: its variables, in variable order


@dataclass(frozen=True)
class RandomTerm:
    """One random-effects bar ``(expression | group)`` after lme4's expansions."""

    expression: TermList
    group: tuple[str, ...]  # the grouping variables whose interaction is the factor
    correlated: bool  # False when the bar came from ``||``

    @property
    def group_name(self) -> str:
        """The factor's name as lme4 prints it, e.g. ``BROOD:LOCATION``."""
        return ":".join(self.group)


@dataclass(frozen=True)
class ModelFormula:
    """A formula read as data: what it names and how, never code."""

    text: str
    response: Node | None
    fixed: TermList
    offsets: tuple[Node, ...]
    random: tuple[RandomTerm, ...]
    variables: tuple[tuple[str, Node], ...]  # key (deparsed) -> expression, first use first

    @property
    def variable_nodes(self) -> dict[str, Node]:
        return dict(self.variables)

    @property
    def columns(self) -> tuple[str, ...]:
        """Every data column the formula reads (response, covariates, offsets, groups)."""
        seen: list[str] = []
        nodes = [n for _, n in self.variables] + list(self.offsets)
        if self.response is not None:
            nodes.insert(0, self.response)
        for node in nodes:
            for name in _column_names(node):
                if name not in seen:
                    seen.append(name)
        for term in self.random:
            for name in term.group:
                if name not in seen:
                    seen.append(name)
        return tuple(seen)

    @property
    def group_columns(self) -> tuple[str, ...]:
        out: list[str] = []
        for term in self.random:
            out += [g for g in term.group if g not in out]
        return tuple(out)


def term_label(term: tuple[str, ...]) -> str:
    return ":".join(term)


def _column_names(node: Node) -> list[str]:
    if isinstance(node, Name):
        return [node.id]
    if isinstance(node, Call):
        return [n for a in node.args for n in _column_names(a)]
    if isinstance(node, BinOp):
        return _column_names(node.left) + _column_names(node.right)
    if isinstance(node, Unary):
        return _column_names(node.operand)
    if isinstance(node, Paren):
        return _column_names(node.inner)
    return []


def parse_formula(text: str, *, require_response: bool = True) -> ModelFormula:
    """Read ``text`` as an R/lme4 model formula; raise :class:`FormulaError` if it cannot."""
    if text.lstrip().startswith("~"):
        raise FormulaError(f"formula {text!r} needs a response: write 'y ~ x1 + x2'")
    tree = parse_expression(text)
    if not (isinstance(tree, BinOp) and tree.op == "~"):
        raise FormulaError(f"formula {text!r} has no '~': write it as 'y ~ x1 + x2 + (1 | group)'")
    response, rhs = tree.left, tree.right
    if _contains_op(rhs, "~") or _contains_op(response, "~"):
        raise FormulaError("the formula has more than one '~'")
    _check_response(response)
    builder = _Builder()
    fixed_items, bars = _split_bars(rhs)
    offsets: list[Node] = []
    fixed = builder.term_list(fixed_items, offsets)
    random: list[RandomTerm] = []
    for bar in bars:
        random += builder.random_terms(bar)
    return ModelFormula(text=text, response=response, fixed=fixed, offsets=tuple(offsets),
                        random=tuple(random), variables=tuple(builder.variables.items()))


def _contains_op(node: Node, op: str) -> bool:
    if isinstance(node, BinOp):
        return node.op == op or _contains_op(node.left, op) or _contains_op(node.right, op)
    if isinstance(node, Call):
        return any(_contains_op(a, op) for a in node.args)
    if isinstance(node, (Paren, Unary)):
        return _contains_op(node.inner if isinstance(node, Paren) else node.operand, op)
    return False


def _check_response(node: Node) -> None:
    if isinstance(node, Call) and node.func == "cbind":
        if len(node.args) != 2:
            raise FormulaError("cbind() in the response takes two columns: "
                               "cbind(successes, failures)")
        for arg in node.args:
            check_arithmetic(arg)
        return
    if isinstance(node, Call) and node.func in FACTOR_FUNCTIONS:
        raise FormulaError("a factor() response is not supported: name the column itself")
    check_arithmetic(node, top=True)


def check_arithmetic(node: Node, *, top: bool = False) -> None:
    """Refuse anything in a numeric expression but columns, numbers, + - * / ^ and math."""
    if isinstance(node, (Name, Number)):
        return
    if isinstance(node, Paren):
        return check_arithmetic(node.inner)
    if isinstance(node, Unary):
        return check_arithmetic(node.operand)
    if isinstance(node, BinOp):
        if node.op not in ("+", "-", "*", "/", "^"):
            raise FormulaError(f"operator {node.op!r} cannot be used inside "
                               f"{deparse(node)!r}: only + - * / ^ are arithmetic")
        check_arithmetic(node.left)
        check_arithmetic(node.right)
        return
    if node.func == "I" and len(node.args) == 1:
        return check_arithmetic(node.args[0])
    if node.func in MATH_FUNCTIONS:
        low, high = MATH_FUNCTIONS[node.func]
        if not low <= len(node.args) <= high:
            raise FormulaError(f"{node.func}() takes {low} argument(s): {deparse(node)!r}")
        for arg in node.args:
            check_arithmetic(arg)
        return
    raise FormulaError(_refusal(node.func))


def _refusal(func: str) -> str:
    if func in _REFUSED_FUNCTIONS:
        return _REFUSED_FUNCTIONS[func]
    allowed = ", ".join(["I", *MATH_FUNCTIONS, "factor", "offset"])
    return f"function {func}() is not allowed in a formula (allowed: {allowed})"


def _split_bars(rhs: Node) -> tuple[list[tuple[int, Node]], list[BinOp]]:
    """Signed top-level summands of the right-hand side, and its random-effects bars."""
    items: list[tuple[int, Node]] = []
    bars: list[BinOp] = []

    def walk(node: Node, sign: int) -> None:
        if isinstance(node, BinOp) and node.op in "+-" and node.op:
            walk(node.left, sign)
            walk(node.right, sign if node.op == "+" else -sign)
        elif isinstance(node, Unary):
            walk(node.operand, sign if node.op == "+" else -sign)
        elif isinstance(node, Paren) and isinstance(node.inner, BinOp) and \
                node.inner.op in ("|", "||"):
            if sign < 0:
                raise FormulaError("a random-effects term cannot be subtracted")
            bars.append(node.inner)
        elif isinstance(node, BinOp) and node.op in ("|", "||"):
            raise FormulaError("put each random-effects term in parentheses: (1 | group)")
        else:
            items.append((sign, node))

    walk(rhs, 1)
    return items, bars


class _Builder:
    """Expands formula operators into terms, recording variables as they appear."""

    def __init__(self) -> None:
        self.variables: dict[str, Node] = {}

    def term_list(self, items: list[tuple[int, Node]], offsets: list[Node] | None) -> TermList:
        """A whole right-hand side: its terms in R's order and its intercept (on by default)."""
        self._seen: list[str] = []
        terms, intercept = self._sum(items, offsets)
        order = self._seen
        ordered = sorted(terms, key=len)  # stable: appearance order within a degree
        return TermList(intercept is not False,
                        tuple(tuple(sorted(t, key=order.index)) for t in ordered))

    def _sum(self, items: list[tuple[int, Node]], offsets: list[Node] | None
             ) -> tuple[list[frozenset[str]], bool | None]:
        intercept: bool | None = None
        terms: list[frozenset[str]] = []
        for sign, node in items:
            if isinstance(node, Number):
                if node.value not in (0.0, 1.0):
                    raise FormulaError(f"the number {node.text} cannot be a term: use 1 or 0 "
                                       "for the intercept, I() for arithmetic")
                intercept = (node.value == 1.0) == (sign > 0)
                continue
            if isinstance(node, Call) and node.func == "offset":
                if sign < 0 or offsets is None:
                    raise FormulaError("offset() belongs in the fixed part, added with '+'")
                if len(node.args) != 1:
                    raise FormulaError("offset() takes one numeric expression")
                check_arithmetic(node.args[0])
                offsets.append(node.args[0])
                continue
            expanded = self.expand(node)
            if sign > 0:
                terms += [t for t in expanded if t not in terms]
            else:
                terms = [t for t in terms if t not in expanded]
        if any(len(t) == 0 for t in terms):
            raise FormulaError("a term of the formula has no variable")
        return terms, intercept

    def expand(self, node: Node) -> list[frozenset[str]]:
        if isinstance(node, Paren):
            return self.expand(node.inner)
        if isinstance(node, BinOp):
            return self._operator(node)
        if isinstance(node, Unary):
            raise FormulaError(f"cannot read {deparse(node)!r} as a term")
        if isinstance(node, Number):
            raise FormulaError(f"the number {node.text} cannot be part of an interaction")
        return [frozenset([self.variable(node)])]

    def _operator(self, node: BinOp) -> list[frozenset[str]]:
        op = node.op
        if op in ("+", "-"):
            items, bars = _split_bars(node)
            if bars:
                raise FormulaError("a random-effects term cannot sit inside an interaction")
            terms, intercept = self._sum(items, None)
            if intercept is not None:
                raise FormulaError("0 or 1 cannot sit inside a parenthesised group of terms")
            return terms
        if op == "^":
            if not (isinstance(node.right, Number) and node.right.value == int(node.right.value)
                    and node.right.value >= 1):
                raise FormulaError("the power of a term, (a + b)^k, must be a whole number >= 1 "
                                   "(use I(x^2) for the square of a column)")
            base = self.expand(node.left)
            out = list(base)
            for _ in range(int(node.right.value) - 1):
                out += [a | b for a in out for b in base if (a | b) not in out]
            return _unique(out)
        if op in ("|", "||", "~"):
            raise FormulaError(f"operator {op!r} cannot be used here")
        left, right = self.expand(node.left), self.expand(node.right)
        if op == ":":
            return _unique([a | b for a in left for b in right])
        if op == "*":
            return _unique(left + right + [a | b for a in left for b in right])
        if op == "%in%":
            outer = frozenset().union(*right)
            return _unique([a | outer for a in left])
        if op == "/":
            outer = frozenset().union(*left)
            return _unique(left + [b | outer for b in right])
        raise FormulaError(f"operator {op!r} is not a formula operator")

    def variable(self, node: Node) -> str:
        if isinstance(node, Name):
            if node.id == ".":
                raise FormulaError("'.' (all other columns) is not supported: name the columns")
        elif isinstance(node, Call):
            if node.func in FACTOR_FUNCTIONS:
                if len(node.args) != 1 or not isinstance(node.args[0], Name):
                    raise FormulaError(f"{node.func}() takes one column name")
            elif node.func == "offset":
                raise FormulaError("offset() must be added to the formula on its own")
            else:
                check_arithmetic(node)
        key = deparse(node)
        self.variables.setdefault(key, node)
        if key not in self._seen:
            self._seen.append(key)
        return key

    def random_terms(self, bar: BinOp) -> list[RandomTerm]:
        groups = _slash_groups(bar.right)
        if bar.op == "||":
            lhs_items, inner_bars = _split_bars(bar.left)
            if inner_bars:
                raise FormulaError("a random-effects term cannot contain another")
            lhs = self.term_list(lhs_items, None)
            pieces = ([TermList(True, ())] if lhs.intercept else []) + \
                [TermList(False, (t,)) for t in lhs.terms]
            return [RandomTerm(p, g, False) for g in groups for p in pieces]
        lhs_items, inner_bars = _split_bars(bar.left)
        if inner_bars:
            raise FormulaError("a random-effects term cannot contain another")
        lhs = self.term_list(lhs_items, None)
        if not lhs.intercept and not lhs.terms:
            raise FormulaError("a random-effects term needs at least one effect, e.g. (1 | g)")
        return [RandomTerm(lhs, g, True) for g in groups]


def _unique(terms: list[frozenset[str]]) -> list[frozenset[str]]:
    out: list[frozenset[str]] = []
    for term in terms:
        if term not in out:
            out.append(term)
    return out


def _slash_groups(node: Node) -> list[tuple[str, ...]]:
    """lme4's expandSlash: ``a/b/c`` -> ``c:b:a``, ``b:a``, ``a``; ``a:b`` stays one factor."""
    if isinstance(node, Paren):
        return _slash_groups(node.inner)
    if isinstance(node, BinOp) and node.op == "/":
        outer = _slash_groups(node.left)
        inner = _interaction_names(node.right)
        return [tuple(inner) + outer[0]] + outer
    return [tuple(_interaction_names(node))]


def _interaction_names(node: Node) -> list[str]:
    if isinstance(node, Paren):
        return _interaction_names(node.inner)
    if isinstance(node, Name) and node.id != ".":
        return [node.id]
    if isinstance(node, BinOp) and node.op == ":":
        return _interaction_names(node.left) + _interaction_names(node.right)
    raise FormulaError(f"the grouping factor {deparse(node)!r} must be a column name, "
                       "an interaction a:b or a nesting a/b")
