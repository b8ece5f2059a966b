"""R model formulas read as data: a tokenizer and a recursive-descent parser.

Nothing here evaluates Python. The parser accepts the part of R's expression
grammar that model formulas use and builds a small tree of frozen nodes;
anything else (strings, indexing, assignment, ``$``, unknown operators) is a
:class:`FormulaError` naming the position. Operator precedence is R's
(``?Syntax``), highest first::

    ^            (right-associative; ``**`` is read as ``^``, as R does)
    - +          (unary)
    :
    %in%
    * /
    + -          (binary)
    |  ||        (inside parentheses: a random-effects term)
    ~
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["FormulaError", "Name", "Number", "Call", "BinOp", "Unary", "Paren", "Node",
           "parse_expression", "deparse"]


class FormulaError(ValueError):
    """The formula cannot be read or cannot mean a model; the message says why."""


@dataclass(frozen=True)
class Name:
    """A column name (backquoted names keep their spaces)."""

    id: str


@dataclass(frozen=True)
class Number:
    value: float
    text: str


@dataclass(frozen=True)
class Call:
    func: str
    args: tuple[Node, ...]


@dataclass(frozen=True)
class BinOp:
    op: str  # one of ~ + - * / ^ : %in% | ||
    left: Node
    right: Node


@dataclass(frozen=True)
class Unary:
    op: str  # + or -
    operand: Node


@dataclass(frozen=True)
class Paren:
    inner: Node


Node = Name | Number | Call | BinOp | Unary | Paren

_TOKEN = re.compile(r"""
    (?P<space>\s+)
  | (?P<number>(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?L?)
  | (?P<name>(?:[A-Za-z]|\.(?![0-9]))[A-Za-z0-9._]*|\.)
  | (?P<backquoted>`[^`]+`)
  | (?P<op>\|\||\*\*|%in%|[~+\-*/^:|(),])
""", re.VERBOSE)

MAX_FORMULA_LENGTH = 5000
MAX_DEPTH = 64

_BINARY_PRECEDENCE = {"~": 1, "|": 2, "||": 2, "+": 3, "-": 3, "*": 4, "/": 4, "%in%": 5,
                      ":": 6, "^": 8}
_UNARY_PRECEDENCE = 7


@dataclass(frozen=True)
class _Token:
    kind: str  # number, name, op, end
    text: str
    pos: int


def _tokens(text: str) -> list[_Token]:
    out, pos = [], 0
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if match is None:
            raise FormulaError(f"cannot read the formula at character {pos + 1} "
                               f"({text[pos]!r}): only column names, numbers and R's formula "
                               "operators are allowed")
        kind = match.lastgroup
        if kind == "backquoted":
            out.append(_Token("name", match.group()[1:-1], pos))
        elif kind != "space":
            word = match.group()
            out.append(_Token(kind, "^" if word == "**" else word, pos))
        pos = match.end()
    out.append(_Token("end", "", len(text)))
    return out


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = _tokens(text)
        self.i = 0
        self.depth = 0

    def peek(self) -> _Token:
        return self.tokens[self.i]

    def take(self) -> _Token:
        token = self.tokens[self.i]
        self.i += 1
        return token

    def expect(self, text: str) -> None:
        token = self.take()
        if token.text != text or token.kind != "op":
            where = "the end" if token.kind == "end" else f"character {token.pos + 1}"
            raise FormulaError(f"the formula is missing {text!r} at {where} "
                               "(check that every '(' is closed)")

    def expression(self, min_precedence: int = 0) -> Node:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise FormulaError(f"the formula nests deeper than {MAX_DEPTH} levels")
        try:
            return self._expression(min_precedence)
        finally:
            self.depth -= 1

    def _expression(self, min_precedence: int) -> Node:
        left = self.prefix()
        while True:
            token = self.peek()
            precedence = _BINARY_PRECEDENCE.get(token.text) if token.kind == "op" else None
            if precedence is None or precedence < min_precedence:
                return left
            self.take()
            # '^' is right-associative; every other operator is left-associative
            right = self.expression(precedence if token.text == "^" else precedence + 1)
            left = BinOp(token.text, left, right)

    def prefix(self) -> Node:
        token = self.take()
        if token.kind == "number":
            return Number(float(token.text.rstrip("L")), token.text.rstrip("L"))
        if token.kind == "name":
            if self.peek().text == "(" and self.peek().kind == "op":
                return self.call(token.text)
            return Name(token.text)
        if token.kind == "op" and token.text in "+-" and token.text:
            return Unary(token.text, self.expression(_UNARY_PRECEDENCE))
        if token.kind == "op" and token.text == "(":
            inner = self.expression()
            self.expect(")")
            return Paren(inner)
        where = "the end" if token.kind == "end" else f"character {token.pos + 1}"
        shown = "" if token.kind == "end" else f" ({token.text!r})"
        raise FormulaError(f"the formula is incomplete or malformed at {where}{shown}")

    def call(self, func: str) -> Call:
        self.expect("(")
        args: list[Node] = []
        if not (self.peek().kind == "op" and self.peek().text == ")"):
            args.append(self.expression())
            while self.peek().kind == "op" and self.peek().text == ",":
                self.take()
                args.append(self.expression())
        self.expect(")")
        return Call(func, tuple(args))


def parse_expression(text: str) -> Node:
    """Parse ``text`` (a whole formula or an expression) into a tree of nodes."""
    if not isinstance(text, str) or not text.strip():
        raise FormulaError("the formula is empty: write it as 'y ~ x1 + x2 + (1 | group)'")
    if len(text) > MAX_FORMULA_LENGTH:
        raise FormulaError(f"the formula is longer than {MAX_FORMULA_LENGTH} characters")
    parser = _Parser(text)
    node = parser.expression()
    token = parser.peek()
    if token.kind != "end":
        raise FormulaError(f"cannot read the formula at character {token.pos + 1} "
                           f"({token.text!r}): an operator is missing or a ')' is unmatched")
    return node


def deparse(node: Node) -> str:
    """The text R's ``deparse`` gives for ``node`` (used for column names)."""
    if isinstance(node, Name):
        return node.id if re.fullmatch(r"(?:[A-Za-z]|\.(?![0-9]))[A-Za-z0-9._]*", node.id) \
            else f"`{node.id}`"
    if isinstance(node, Number):
        return _number_text(node.value)
    if isinstance(node, Call):
        return f"{node.func}({', '.join(deparse(a) for a in node.args)})"
    if isinstance(node, Paren):
        return f"({deparse(node.inner)})"
    if isinstance(node, Unary):
        return f"{node.op}{deparse(node.operand)}"
    if node.op in ("^", ":", "/"):
        return f"{deparse(node.left)}{node.op}{deparse(node.right)}"
    return f"{deparse(node.left)} {node.op} {deparse(node.right)}"


def _number_text(value: float) -> str:
    """R's shortest decimal form: 2 not 2.0, 0.5, 1e-08."""
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    text = repr(value)
    if "e" in text:
        mantissa, exponent = text.split("e")
        sign = "-" if exponent.startswith("-") else "+"
        text = f"{mantissa}e{sign}{abs(int(exponent)):02d}"
    return text
