//! Reads tokens into a [`Program`]: a recursive-descent parser whose recursion is counted.

use std::collections::BTreeSet;

use super::lex::{tokens, Spanned, Tok};
use super::value::Value;
use super::{MAX_NESTING, MAX_NODES, MAX_SOURCE_BYTES};

/// Why a source is not a program, with the column where it went wrong when there is one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SyntaxError {
    #[error("the expression is empty")]
    Empty,
    #[error("the expression is too long ({0} bytes, at most {MAX_SOURCE_BYTES})")]
    TooLong(usize),
    #[error("the expression nests more than {MAX_NESTING} levels deep (column {0})")]
    TooDeep(usize),
    #[error("the expression has more than {MAX_NODES} parts")]
    TooLarge,
    #[error("column {at}: {message}")]
    At { at: usize, message: String },
}

impl SyntaxError {
    pub(super) fn at(at: usize, message: impl Into<String>) -> SyntaxError {
        SyntaxError::At {
            at,
            message: message.into(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Op {
    Mul,
    Div,
    Rem,
    Add,
    Sub,
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    In,
}

impl Op {
    pub(super) fn symbol(self) -> &'static str {
        match self {
            Op::Mul => "*",
            Op::Div => "/",
            Op::Rem => "%",
            Op::Add => "+",
            Op::Sub => "-",
            Op::Eq => "==",
            Op::Ne => "!=",
            Op::Lt => "<",
            Op::Le => "<=",
            Op::Gt => ">",
            Op::Ge => ">=",
            Op::In => "in",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Unary {
    Not,
    Neg,
}

/// What follows a primary expression: `.field`, `[index]`, `.method(args)`.
#[derive(Debug, Clone)]
pub(super) enum Postfix {
    Field(String),
    Index(Expr),
    Method(String, Vec<Expr>),
}

/// A node. Chains of one precedence level are flat, so depth comes only from nesting.
#[derive(Debug, Clone)]
pub(super) enum Expr {
    Literal(Value),
    Name(String),
    Call(String, Vec<Expr>),
    List(Vec<Expr>),
    Map(Vec<(Expr, Expr)>),
    /// Applied innermost (last) first.
    Unary(Vec<Unary>, Box<Expr>),
    Postfix(Box<Expr>, Vec<Postfix>),
    /// Left to right: `((first op1 e1) op2 e2) ...`.
    Chain(Box<Expr>, Vec<(Op, Expr)>),
    And(Vec<Expr>),
    Or(Vec<Expr>),
    If(Box<Expr>, Box<Expr>, Box<Expr>),
}

/// A parsed expression.
#[derive(Debug, Clone)]
pub struct Program {
    pub(super) root: Expr,
}

impl Program {
    /// Parses `source`, within [`MAX_SOURCE_BYTES`], [`MAX_NESTING`] and [`MAX_NODES`].
    pub fn compile(source: &str) -> Result<Program, SyntaxError> {
        if source.len() > MAX_SOURCE_BYTES {
            return Err(SyntaxError::TooLong(source.len()));
        }
        let toks = tokens(source)?;
        if toks.is_empty() {
            return Err(SyntaxError::Empty);
        }
        let mut p = Parser {
            toks,
            pos: 0,
            nodes: 0,
            end: source.chars().count() + 1,
        };
        let root = p.expr(0)?;
        if let Some((t, at)) = p.toks.get(p.pos) {
            return Err(SyntaxError::at(
                *at,
                format!("unexpected {} after a complete expression", t.show()),
            ));
        }
        Ok(Program { root })
    }

    /// The variables the program reads (the first name of each `a.b.c`).
    pub fn variables(&self) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        walk(&self.root, &mut |e| {
            if let Expr::Name(n) = e {
                out.insert(n.clone());
            }
        });
        out
    }

    /// The functions and methods the program calls.
    pub fn functions(&self) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        walk(&self.root, &mut |e| match e {
            Expr::Call(f, _) => {
                out.insert(f.clone());
            }
            Expr::Postfix(_, ops) => {
                for op in ops {
                    if let Postfix::Method(m, _) = op {
                        out.insert(m.clone());
                    }
                }
            }
            _ => {}
        });
        out
    }
}

/// Visits every node; recursion is bounded by the nesting the parser allowed.
fn walk(e: &Expr, f: &mut impl FnMut(&Expr)) {
    f(e);
    match e {
        Expr::Literal(_) | Expr::Name(_) => {}
        Expr::Call(_, args) | Expr::List(args) | Expr::And(args) | Expr::Or(args) => {
            args.iter().for_each(|a| walk(a, f))
        }
        Expr::Map(entries) => entries.iter().for_each(|(k, v)| {
            walk(k, f);
            walk(v, f);
        }),
        Expr::Unary(_, inner) => walk(inner, f),
        Expr::Postfix(base, ops) => {
            walk(base, f);
            for op in ops {
                match op {
                    Postfix::Field(_) => {}
                    Postfix::Index(i) => walk(i, f),
                    Postfix::Method(_, args) => args.iter().for_each(|a| walk(a, f)),
                }
            }
        }
        Expr::Chain(first, rest) => {
            walk(first, f);
            rest.iter().for_each(|(_, e)| walk(e, f));
        }
        Expr::If(c, a, b) => {
            walk(c, f);
            walk(a, f);
            walk(b, f);
        }
    }
}

struct Parser {
    toks: Vec<Spanned>,
    pos: usize,
    nodes: usize,
    /// The column just past the source, for "ended early" errors.
    end: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.pos).map(|(t, _)| t)
    }

    fn column(&self) -> usize {
        self.toks.get(self.pos).map_or(self.end, |(_, at)| *at)
    }

    fn eat(&mut self, t: &Tok) -> bool {
        if self.peek() == Some(t) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn expect(&mut self, t: Tok, what: &str) -> Result<(), SyntaxError> {
        if self.eat(&t) {
            return Ok(());
        }
        Err(self.unexpected(what))
    }

    fn unexpected(&self, wanted: &str) -> SyntaxError {
        match self.toks.get(self.pos) {
            Some((t, at)) => SyntaxError::at(*at, format!("expected {wanted}, found {}", t.show())),
            None => SyntaxError::at(self.end, format!("expected {wanted}, the expression ended")),
        }
    }

    fn node(&mut self) -> Result<(), SyntaxError> {
        self.nodes += 1;
        if self.nodes > MAX_NODES {
            return Err(SyntaxError::TooLarge);
        }
        Ok(())
    }

    /// `or ('?' or ':' expr)?`; `depth` counts the enclosing nestings.
    fn expr(&mut self, depth: usize) -> Result<Expr, SyntaxError> {
        if depth > MAX_NESTING {
            return Err(SyntaxError::TooDeep(self.column()));
        }
        let cond = self.or(depth)?;
        if !self.eat(&Tok::Question) {
            return Ok(cond);
        }
        self.node()?;
        let then = self.or(depth + 1)?;
        self.expect(Tok::Colon, "`:` of a `?:`")?;
        let otherwise = self.expr(depth + 1)?;
        Ok(Expr::If(
            Box::new(cond),
            Box::new(then),
            Box::new(otherwise),
        ))
    }

    fn or(&mut self, depth: usize) -> Result<Expr, SyntaxError> {
        let mut terms = vec![self.and(depth)?];
        while self.eat(&Tok::OrOr) {
            self.node()?;
            terms.push(self.and(depth)?);
        }
        Ok(one_or(terms, Expr::Or))
    }

    fn and(&mut self, depth: usize) -> Result<Expr, SyntaxError> {
        let mut terms = vec![self.relation(depth)?];
        while self.eat(&Tok::AndAnd) {
            self.node()?;
            terms.push(self.relation(depth)?);
        }
        Ok(one_or(terms, Expr::And))
    }

    fn relation(&mut self, depth: usize) -> Result<Expr, SyntaxError> {
        let first = self.additive(depth)?;
        let mut rest = Vec::new();
        loop {
            let op = match self.peek() {
                Some(Tok::Eq) => Op::Eq,
                Some(Tok::Ne) => Op::Ne,
                Some(Tok::Lt) => Op::Lt,
                Some(Tok::Le) => Op::Le,
                Some(Tok::Gt) => Op::Gt,
                Some(Tok::Ge) => Op::Ge,
                Some(Tok::In) => Op::In,
                _ => break,
            };
            self.pos += 1;
            self.node()?;
            rest.push((op, self.additive(depth)?));
        }
        Ok(chain(first, rest))
    }

    fn additive(&mut self, depth: usize) -> Result<Expr, SyntaxError> {
        let first = self.multiplicative(depth)?;
        let mut rest = Vec::new();
        loop {
            let op = match self.peek() {
                Some(Tok::Plus) => Op::Add,
                Some(Tok::Minus) => Op::Sub,
                _ => break,
            };
            self.pos += 1;
            self.node()?;
            rest.push((op, self.multiplicative(depth)?));
        }
        Ok(chain(first, rest))
    }

    fn multiplicative(&mut self, depth: usize) -> Result<Expr, SyntaxError> {
        let first = self.unary(depth)?;
        let mut rest = Vec::new();
        loop {
            let op = match self.peek() {
                Some(Tok::Star) => Op::Mul,
                Some(Tok::Slash) => Op::Div,
                Some(Tok::Percent) => Op::Rem,
                _ => break,
            };
            self.pos += 1;
            self.node()?;
            rest.push((op, self.unary(depth)?));
        }
        Ok(chain(first, rest))
    }

    fn unary(&mut self, depth: usize) -> Result<Expr, SyntaxError> {
        let mut ops = Vec::new();
        loop {
            match self.peek() {
                Some(Tok::Bang) => ops.push(Unary::Not),
                Some(Tok::Minus) => ops.push(Unary::Neg),
                _ => break,
            }
            self.pos += 1;
            self.node()?;
        }
        // `-` right before an integer literal is part of it, so i64::MIN can be written.
        let negative_literal = ops.last() == Some(&Unary::Neg)
            && matches!(self.peek(), Some(Tok::Int(_)))
            && !matches!(
                self.toks.get(self.pos + 1),
                Some((Tok::Dot | Tok::LBracket, _))
            );
        let base = if negative_literal {
            let at = self.column();
            ops.pop();
            let Some(Tok::Int(m)) = self.peek().cloned() else {
                return Err(self.unexpected("a number"));
            };
            self.pos += 1;
            self.node()?;
            let v = i64::try_from(-i128::from(m))
                .map_err(|_| SyntaxError::at(at, format!("the integer -{m} is out of range")))?;
            Expr::Literal(Value::Int(v))
        } else {
            self.member(depth)?
        };
        Ok(if ops.is_empty() {
            base
        } else {
            Expr::Unary(ops, Box::new(base))
        })
    }

    fn member(&mut self, depth: usize) -> Result<Expr, SyntaxError> {
        let base = self.primary(depth)?;
        let mut ops = Vec::new();
        loop {
            if self.eat(&Tok::Dot) {
                self.node()?;
                let name = match self.peek().cloned() {
                    Some(Tok::Ident(n)) => n,
                    _ => return Err(self.unexpected("a field or method name after `.`")),
                };
                self.pos += 1;
                if self.eat(&Tok::LParen) {
                    let args = self.list(depth + 1, Tok::RParen)?;
                    ops.push(Postfix::Method(name, args));
                } else {
                    ops.push(Postfix::Field(name));
                }
            } else if self.eat(&Tok::LBracket) {
                self.node()?;
                let index = self.expr(depth + 1)?;
                self.expect(Tok::RBracket, "`]`")?;
                ops.push(Postfix::Index(index));
            } else {
                break;
            }
        }
        Ok(if ops.is_empty() {
            base
        } else {
            Expr::Postfix(Box::new(base), ops)
        })
    }

    fn primary(&mut self, depth: usize) -> Result<Expr, SyntaxError> {
        self.node()?;
        let Some(tok) = self.peek().cloned() else {
            return Err(self.unexpected("a value"));
        };
        let at = self.column();
        self.pos += 1;
        Ok(match tok {
            Tok::Int(m) => {
                Expr::Literal(Value::Int(i64::try_from(m).map_err(|_| {
                    SyntaxError::at(at, format!("the integer {m} is out of range"))
                })?))
            }
            Tok::UInt(u) => Expr::Literal(Value::UInt(u)),
            Tok::Double(d) => Expr::Literal(Value::Double(d)),
            Tok::Str(s) => Expr::Literal(Value::String(s.into())),
            Tok::True => Expr::Literal(Value::Bool(true)),
            Tok::False => Expr::Literal(Value::Bool(false)),
            Tok::Null => Expr::Literal(Value::Null),
            Tok::Ident(name) => {
                if self.eat(&Tok::LParen) {
                    Expr::Call(name, self.list(depth + 1, Tok::RParen)?)
                } else {
                    Expr::Name(name)
                }
            }
            Tok::LParen => {
                let inner = self.expr(depth + 1)?;
                self.expect(Tok::RParen, "`)`")?;
                inner
            }
            Tok::LBracket => Expr::List(self.list(depth + 1, Tok::RBracket)?),
            Tok::LBrace => Expr::Map(self.map(depth + 1)?),
            other => {
                return Err(SyntaxError::at(
                    at,
                    format!("expected a value, found {}", other.show()),
                ))
            }
        })
    }

    /// Comma-separated expressions up to `close` (a trailing comma is allowed).
    fn list(&mut self, depth: usize, close: Tok) -> Result<Vec<Expr>, SyntaxError> {
        if depth > MAX_NESTING {
            return Err(SyntaxError::TooDeep(self.column()));
        }
        let mut items = Vec::new();
        loop {
            if self.eat(&close) {
                return Ok(items);
            }
            items.push(self.expr(depth)?);
            if !self.eat(&Tok::Comma) {
                let wanted = format!("`,` or {}", close.show());
                self.expect(close, &wanted)?;
                return Ok(items);
            }
        }
    }

    fn map(&mut self, depth: usize) -> Result<Vec<(Expr, Expr)>, SyntaxError> {
        if depth > MAX_NESTING {
            return Err(SyntaxError::TooDeep(self.column()));
        }
        let mut entries = Vec::new();
        loop {
            if self.eat(&Tok::RBrace) {
                return Ok(entries);
            }
            let key = self.expr(depth)?;
            self.expect(Tok::Colon, "`:` after a map key")?;
            let value = self.expr(depth)?;
            entries.push((key, value));
            if !self.eat(&Tok::Comma) {
                self.expect(Tok::RBrace, "`,` or `}`")?;
                return Ok(entries);
            }
        }
    }
}

fn one_or(mut terms: Vec<Expr>, many: fn(Vec<Expr>) -> Expr) -> Expr {
    if terms.len() == 1 {
        if let Some(t) = terms.pop() {
            return t;
        }
    }
    many(terms)
}

fn chain(first: Expr, rest: Vec<(Op, Expr)>) -> Expr {
    if rest.is_empty() {
        first
    } else {
        Expr::Chain(Box::new(first), rest)
    }
}
