//! Splits CEL source into tokens.

use super::parse::SyntaxError;

#[derive(Debug, Clone, PartialEq)]
pub(super) enum Tok {
    Ident(String),
    /// An integer literal's magnitude: the parser applies a leading `-` before range checks,
    /// so `-9223372036854775808` is read.
    Int(u64),
    UInt(u64),
    Double(f64),
    Str(String),
    True,
    False,
    Null,
    In,
    LParen,
    RParen,
    LBracket,
    RBracket,
    LBrace,
    RBrace,
    Dot,
    Comma,
    Colon,
    Question,
    Plus,
    Minus,
    Star,
    Slash,
    Percent,
    Bang,
    AndAnd,
    OrOr,
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

impl Tok {
    /// How the token reads in a message.
    pub(super) fn show(&self) -> String {
        match self {
            Tok::Ident(s) => format!("name {s:?}"),
            Tok::Int(i) => format!("number {i}"),
            Tok::UInt(u) => format!("number {u}u"),
            Tok::Double(d) => format!("number {d}"),
            Tok::Str(_) => "a string".to_string(),
            Tok::True => "`true`".to_string(),
            Tok::False => "`false`".to_string(),
            Tok::Null => "`null`".to_string(),
            Tok::In => "`in`".to_string(),
            other => format!("`{}`", punct(other)),
        }
    }
}

fn punct(t: &Tok) -> &'static str {
    match t {
        Tok::LParen => "(",
        Tok::RParen => ")",
        Tok::LBracket => "[",
        Tok::RBracket => "]",
        Tok::LBrace => "{",
        Tok::RBrace => "}",
        Tok::Dot => ".",
        Tok::Comma => ",",
        Tok::Colon => ":",
        Tok::Question => "?",
        Tok::Plus => "+",
        Tok::Minus => "-",
        Tok::Star => "*",
        Tok::Slash => "/",
        Tok::Percent => "%",
        Tok::Bang => "!",
        Tok::AndAnd => "&&",
        Tok::OrOr => "||",
        Tok::Eq => "==",
        Tok::Ne => "!=",
        Tok::Lt => "<",
        Tok::Le => "<=",
        Tok::Gt => ">",
        Tok::Ge => ">=",
        _ => "?",
    }
}

/// A token and the column (1-based, in characters) where it starts.
pub(super) type Spanned = (Tok, usize);

pub(super) fn tokens(src: &str) -> Result<Vec<Spanned>, SyntaxError> {
    let chars: Vec<char> = src.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while let Some(&c) = chars.get(i) {
        let at = i + 1;
        let next = chars.get(i + 1).copied();
        if c.is_whitespace() {
            i += 1;
            continue;
        }
        if c == '/' && next == Some('/') {
            while chars.get(i).is_some_and(|c| *c != '\n') {
                i += 1;
            }
            continue;
        }
        let two = |t: Tok| (t, 2);
        let one = |t: Tok| (t, 1);
        let punct = match (c, next) {
            ('&', Some('&')) => Some(two(Tok::AndAnd)),
            ('|', Some('|')) => Some(two(Tok::OrOr)),
            ('=', Some('=')) => Some(two(Tok::Eq)),
            ('!', Some('=')) => Some(two(Tok::Ne)),
            ('<', Some('=')) => Some(two(Tok::Le)),
            ('>', Some('=')) => Some(two(Tok::Ge)),
            ('<', _) => Some(one(Tok::Lt)),
            ('>', _) => Some(one(Tok::Gt)),
            ('!', _) => Some(one(Tok::Bang)),
            ('(', _) => Some(one(Tok::LParen)),
            (')', _) => Some(one(Tok::RParen)),
            ('[', _) => Some(one(Tok::LBracket)),
            (']', _) => Some(one(Tok::RBracket)),
            ('{', _) => Some(one(Tok::LBrace)),
            ('}', _) => Some(one(Tok::RBrace)),
            ('.', _) => Some(one(Tok::Dot)),
            (',', _) => Some(one(Tok::Comma)),
            (':', _) => Some(one(Tok::Colon)),
            ('?', _) => Some(one(Tok::Question)),
            ('+', _) => Some(one(Tok::Plus)),
            ('-', _) => Some(one(Tok::Minus)),
            ('*', _) => Some(one(Tok::Star)),
            ('/', _) => Some(one(Tok::Slash)),
            ('%', _) => Some(one(Tok::Percent)),
            _ => None,
        };
        if let Some((tok, len)) = punct {
            out.push((tok, at));
            i += len;
            continue;
        }
        if c == '\'' || c == '"' {
            let (s, end) = string(&chars, i, false, at)?;
            out.push((Tok::Str(s), at));
            i = end;
            continue;
        }
        if (c == 'r' || c == 'R') && matches!(next, Some('\'' | '"')) {
            let (s, end) = string(&chars, i + 1, true, at)?;
            out.push((Tok::Str(s), at));
            i = end;
            continue;
        }
        if (c == 'b' || c == 'B') && matches!(next, Some('\'' | '"')) {
            return Err(SyntaxError::at(at, "bytes literals are not supported here"));
        }
        if c.is_ascii_digit() {
            let (tok, end) = number(&chars, i, at)?;
            out.push((tok, at));
            i = end;
            continue;
        }
        if c.is_ascii_alphabetic() || c == '_' {
            let start = i;
            while chars
                .get(i)
                .is_some_and(|c| c.is_ascii_alphanumeric() || *c == '_')
            {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            out.push((
                match word.as_str() {
                    "true" => Tok::True,
                    "false" => Tok::False,
                    "null" => Tok::Null,
                    "in" => Tok::In,
                    _ => Tok::Ident(word),
                },
                at,
            ));
            continue;
        }
        return Err(SyntaxError::at(at, format!("unexpected character {c:?}")));
    }
    Ok(out)
}

fn number(chars: &[char], start: usize, at: usize) -> Result<(Tok, usize), SyntaxError> {
    let mut i = start;
    let hex = chars.get(i) == Some(&'0') && matches!(chars.get(i + 1), Some('x' | 'X'));
    let digits_from;
    if hex {
        i += 2;
        digits_from = i;
        while chars.get(i).is_some_and(char::is_ascii_hexdigit) {
            i += 1;
        }
    } else {
        digits_from = i;
        while chars.get(i).is_some_and(char::is_ascii_digit) {
            i += 1;
        }
    }
    let int_text: String = chars[digits_from..i].iter().collect();
    if int_text.is_empty() {
        return Err(SyntaxError::at(
            at,
            "a hexadecimal number needs digits after 0x",
        ));
    }
    let mut is_double = false;
    if !hex {
        if chars.get(i) == Some(&'.') && chars.get(i + 1).is_some_and(char::is_ascii_digit) {
            is_double = true;
            i += 1;
            while chars.get(i).is_some_and(char::is_ascii_digit) {
                i += 1;
            }
        }
        if matches!(chars.get(i), Some('e' | 'E')) {
            let mut j = i + 1;
            if matches!(chars.get(j), Some('+' | '-')) {
                j += 1;
            }
            if !chars.get(j).is_some_and(char::is_ascii_digit) {
                return Err(SyntaxError::at(at, "an exponent needs digits"));
            }
            while chars.get(j).is_some_and(char::is_ascii_digit) {
                j += 1;
            }
            is_double = true;
            i = j;
        }
    }
    let text: String = chars[start..i].iter().collect();
    let unsigned = !is_double && matches!(chars.get(i), Some('u' | 'U'));
    let tok = if is_double {
        let d: f64 = text
            .parse()
            .map_err(|_| SyntaxError::at(at, format!("{text} is not a number")))?;
        Tok::Double(d)
    } else {
        let radix = if hex { 16 } else { 10 };
        let v = u64::from_str_radix(&int_text, radix)
            .map_err(|_| SyntaxError::at(at, format!("the integer {text} is out of range")))?;
        if unsigned {
            i += 1;
            Tok::UInt(v)
        } else {
            Tok::Int(v)
        }
    };
    if chars
        .get(i)
        .is_some_and(|c| c.is_ascii_alphanumeric() || *c == '_')
    {
        return Err(SyntaxError::at(
            at,
            format!("a number runs into {:?}", chars[i]),
        ));
    }
    Ok((tok, i))
}

/// Reads a string literal whose opening quote is at `start`; returns it and the index after
/// its closing quote.
fn string(
    chars: &[char],
    start: usize,
    raw: bool,
    at: usize,
) -> Result<(String, usize), SyntaxError> {
    let q = chars[start];
    let triple = chars.get(start + 1) == Some(&q) && chars.get(start + 2) == Some(&q);
    let mut i = start + if triple { 3 } else { 1 };
    let mut out = String::new();
    loop {
        let Some(&c) = chars.get(i) else {
            return Err(SyntaxError::at(at, "the string is not closed"));
        };
        if c == q {
            if !triple {
                return Ok((out, i + 1));
            }
            if chars.get(i + 1) == Some(&q) && chars.get(i + 2) == Some(&q) {
                return Ok((out, i + 3));
            }
        }
        if !triple && (c == '\n' || c == '\r') {
            return Err(SyntaxError::at(
                at,
                "the string is not closed on its line (triple quotes span lines)",
            ));
        }
        if c == '\\' && !raw {
            let (ch, len) = escape(chars, i, at)?;
            out.push(ch);
            i += len;
            continue;
        }
        out.push(c);
        i += 1;
    }
}

/// The character an escape at `i` (its backslash) stands for, and its length.
fn escape(chars: &[char], i: usize, at: usize) -> Result<(char, usize), SyntaxError> {
    let bad = || SyntaxError::at(at, "the string holds an invalid escape sequence");
    let c = *chars.get(i + 1).ok_or_else(bad)?;
    let simple = match c {
        'a' => Some('\u{7}'),
        'b' => Some('\u{8}'),
        'f' => Some('\u{c}'),
        'n' => Some('\n'),
        'r' => Some('\r'),
        't' => Some('\t'),
        'v' => Some('\u{b}'),
        '\\' | '\'' | '"' | '`' | '?' => Some(c),
        _ => None,
    };
    if let Some(ch) = simple {
        return Ok((ch, 2));
    }
    let (radix, digits, from) = match c {
        'x' | 'X' => (16, 2, i + 2),
        'u' => (16, 4, i + 2),
        'U' => (16, 8, i + 2),
        '0'..='3' => (8, 3, i + 1),
        _ => return Err(bad()),
    };
    let text: String = chars
        .get(from..from + digits)
        .ok_or_else(bad)?
        .iter()
        .collect();
    let code = u32::from_str_radix(&text, radix).map_err(|_| bad())?;
    let ch = char::from_u32(code).ok_or_else(bad)?;
    Ok((ch, from + digits - i))
}
