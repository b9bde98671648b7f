//! The one reading of a message that contract §4 allows: RFC 8259 JSON, and within it no
//! duplicate key in any object, no arrays and objects nested deeper than 128, no number beyond the
//! range of a double and no unpaired surrogate escape, anywhere in the message, in the fields the
//! contract ignores too. Whatever breaks one of these is `malformed`.
//!
//! serde_json's own `Value` cannot be this reader: it keeps the last of two equal keys without a
//! word, so two readers of one message could see two different messages, and its recursion limit
//! refuses a nesting of 128 (it allows 127), one level short of the contract. So the reference
//! validator reads the text here, into a `serde_json::Value` for the checks that follow.

use serde_json::{Map, Number, Value};
use std::fmt;
use std::ops::Range;

/// The deepest nesting of arrays and objects a message may have; the top-level object is 1.
pub(crate) const MAX_DEPTH: usize = 128;

/// Why a payload cannot be read, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Malformed {
    /// Byte offset in the payload of the first thing that could not be read.
    pub offset: usize,
    pub problem: String,
}

impl fmt::Display for Malformed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (at byte {})", self.problem, self.offset)
    }
}

/// Reads one JSON value that fills the whole of `text` (whitespace aside).
///
/// Numbers keep what their spelling says: an integer written without fraction or exponent is a
/// `u64` when it is from 0 to 2^64 − 1 and an `i64` when negative and in range; every other
/// number, `-0` included, is a double (as serde_json reads them), so that a check for an
/// unsigned integer never takes `137.0`, `1e2` or `-0` for one. A number beyond the range of a
/// double (one that rounds to infinity) is malformed; one that rounds to zero is not: it is in
/// range, merely small.
pub(crate) fn parse(text: &str) -> Result<Value, Malformed> {
    let mut reader = Reader::new(text);
    let value = reader.value(0)?;
    reader.end()?;
    Ok(value)
}

/// A member of an object: its key (escapes resolved) and the byte range of its value's text.
pub(crate) type Member = (String, Range<usize>);

/// The members of the object `text` holds, read as [`parse`] reads it, in the order sent.
/// `Ok(None)` when the text is JSON but not an object.
pub(crate) fn members(text: &str) -> Result<Option<Vec<Member>>, Malformed> {
    let mut reader = Reader::new(text);
    reader.whitespace();
    let mut members = Vec::new();
    let is_object = reader.peek() == Some(b'{');
    if is_object {
        reader.object(1, |key, span| members.push((key.to_owned(), span)))?;
    } else {
        reader.value(0)?;
    }
    reader.end()?;
    Ok(is_object.then_some(members))
}

struct Reader<'a> {
    text: &'a str,
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn new(text: &'a str) -> Self {
        Reader {
            text,
            bytes: text.as_bytes(),
            pos: 0,
        }
    }

    fn end(&mut self) -> Result<(), Malformed> {
        self.whitespace();
        if self.pos != self.text.len() {
            return Err(self.fail_here("more text follows the JSON value"));
        }
        Ok(())
    }

    fn fail(&self, offset: usize, problem: impl Into<String>) -> Malformed {
        Malformed {
            offset,
            problem: problem.into(),
        }
    }

    fn fail_here(&self, problem: impl Into<String>) -> Malformed {
        self.fail(self.pos, problem)
    }

    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    fn eat(&mut self, b: u8) -> bool {
        let found = self.peek() == Some(b);
        if found {
            self.pos += 1;
        }
        found
    }

    /// RFC 8259's whitespace: space, tab, line feed, carriage return, and nothing else.
    fn whitespace(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.pos += 1;
        }
    }

    /// A value inside `depth` levels of arrays and objects.
    fn value(&mut self, depth: usize) -> Result<Value, Malformed> {
        self.whitespace();
        match self.peek() {
            Some(b'{') => self.object(depth + 1, |_, _| ()),
            Some(b'[') => self.array(depth + 1),
            Some(b'"') => self.string().map(Value::String),
            Some(b't') => self.literal("true", Value::Bool(true)),
            Some(b'f') => self.literal("false", Value::Bool(false)),
            Some(b'n') => self.literal("null", Value::Null),
            Some(b'-' | b'0'..=b'9') => self.number(),
            Some(_) => Err(self.fail_here("expected a JSON value")),
            None => Err(self.fail_here("the payload ends where a value was expected")),
        }
    }

    fn enter(&self, depth: usize) -> Result<(), Malformed> {
        if depth > MAX_DEPTH {
            return Err(self.fail_here(format!(
                "arrays and objects are nested deeper than {MAX_DEPTH} levels"
            )));
        }
        Ok(())
    }

    fn literal(&mut self, word: &str, value: Value) -> Result<Value, Malformed> {
        if !self.bytes[self.pos..].starts_with(word.as_bytes()) {
            return Err(self.fail_here("expected a JSON value"));
        }
        self.pos += word.len();
        Ok(value)
    }

    /// An object; `member` hears of each key and the range of its value's text.
    fn object(
        &mut self,
        depth: usize,
        mut member: impl FnMut(&str, Range<usize>),
    ) -> Result<Value, Malformed> {
        self.enter(depth)?;
        self.pos += 1;
        let mut map = Map::new();
        self.whitespace();
        if self.eat(b'}') {
            return Ok(Value::Object(map));
        }
        loop {
            self.whitespace();
            let at = self.pos;
            if self.peek() != Some(b'"') {
                return Err(self.fail_here("expected a key in double quotes"));
            }
            // Keys are compared as read, escapes resolved: `"a"` and `"\u0061"` are one key.
            let key = self.string()?;
            if map.contains_key(&key) {
                return Err(self.fail(at, duplicate(&key)));
            }
            self.whitespace();
            if !self.eat(b':') {
                return Err(self.fail_here("expected ':' after a key"));
            }
            self.whitespace();
            let start = self.pos;
            let value = self.value(depth)?;
            member(&key, start..self.pos);
            map.insert(key, value);
            self.whitespace();
            if self.eat(b',') {
                continue;
            }
            if self.eat(b'}') {
                return Ok(Value::Object(map));
            }
            return Err(self.fail_here("expected ',' or '}' in an object"));
        }
    }

    fn array(&mut self, depth: usize) -> Result<Value, Malformed> {
        self.enter(depth)?;
        self.pos += 1;
        let mut items = Vec::new();
        self.whitespace();
        if self.eat(b']') {
            return Ok(Value::Array(items));
        }
        loop {
            items.push(self.value(depth)?);
            self.whitespace();
            if self.eat(b',') {
                continue;
            }
            if self.eat(b']') {
                return Ok(Value::Array(items));
            }
            return Err(self.fail_here("expected ',' or ']' in an array"));
        }
    }

    /// Digits, as many as there are; whether there was one.
    fn digits(&mut self) -> bool {
        let start = self.pos;
        while matches!(self.peek(), Some(b'0'..=b'9')) {
            self.pos += 1;
        }
        self.pos > start
    }

    fn number(&mut self) -> Result<Value, Malformed> {
        let start = self.pos;
        let negative = self.eat(b'-');
        match self.peek() {
            Some(b'0') => {
                self.pos += 1;
                if matches!(self.peek(), Some(b'0'..=b'9')) {
                    return Err(self.fail(start, "a number may not start with a 0 before a digit"));
                }
            }
            Some(b'1'..=b'9') => {
                self.digits();
            }
            _ => return Err(self.fail_here("expected a digit in a number")),
        }
        let mut integer = true;
        if self.eat(b'.') {
            integer = false;
            if !self.digits() {
                return Err(self.fail_here("expected a digit after the '.' of a number"));
            }
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            integer = false;
            self.pos += 1;
            if !self.eat(b'+') {
                self.eat(b'-');
            }
            if !self.digits() {
                return Err(self.fail_here("expected a digit in the exponent of a number"));
            }
        }
        let literal = &self.text[start..self.pos];
        let exact = match (integer, negative) {
            (true, false) => literal.parse::<u64>().ok().map(Number::from),
            (true, true) if literal != "-0" => literal.parse::<i64>().ok().map(Number::from),
            _ => None,
        };
        if let Some(n) = exact {
            return Ok(Value::Number(n));
        }
        // JSON's number grammar is a subset of Rust's, whose parse rounds correctly.
        let double: f64 = literal
            .parse()
            .map_err(|_| self.fail(start, "a number that cannot be read"))?;
        Number::from_f64(double)
            .map(Value::Number)
            .ok_or_else(|| self.fail(start, "a number beyond the range of a double"))
    }

    fn string(&mut self) -> Result<String, Malformed> {
        let open = self.pos;
        self.pos += 1;
        let mut out = String::new();
        loop {
            let run = self.pos;
            while matches!(self.peek(), Some(b) if b != b'"' && b != b'\\' && b >= 0x20) {
                self.pos += 1;
            }
            // The run ends at an ASCII byte or at the end, both character boundaries.
            out.push_str(&self.text[run..self.pos]);
            match self.peek() {
                Some(b'"') => {
                    self.pos += 1;
                    return Ok(out);
                }
                Some(b'\\') => out.push(self.escape()?),
                Some(_) => {
                    return Err(
                        self.fail_here("a control character inside a string must be escaped")
                    )
                }
                None => return Err(self.fail(open, "a string is not closed")),
            }
        }
    }

    fn escape(&mut self) -> Result<char, Malformed> {
        let at = self.pos;
        self.pos += 1;
        let c = match self.peek() {
            Some(b'"') => '"',
            Some(b'\\') => '\\',
            Some(b'/') => '/',
            Some(b'b') => '\u{8}',
            Some(b'f') => '\u{c}',
            Some(b'n') => '\n',
            Some(b'r') => '\r',
            Some(b't') => '\t',
            Some(b'u') => {
                self.pos += 1;
                return self.unicode_escape(at);
            }
            _ => return Err(self.fail(at, "an unknown escape in a string")),
        };
        self.pos += 1;
        Ok(c)
    }

    /// The character of a `\uXXXX` escape, or of a pair of them that encodes one UTF-16
    /// surrogate pair; `at` is where the escape began.
    fn unicode_escape(&mut self, at: usize) -> Result<char, Malformed> {
        let unpaired = |r: &Self| r.fail(at, "an unpaired surrogate escape in a string");
        let unit = self.hex4()?;
        let code = match unit {
            0xD800..=0xDBFF => {
                if !self.bytes[self.pos..].starts_with(b"\\u") {
                    return Err(unpaired(self));
                }
                self.pos += 2;
                let low = self.hex4()?;
                if !(0xDC00..=0xDFFF).contains(&low) {
                    return Err(unpaired(self));
                }
                0x10000 + ((unit - 0xD800) << 10) + (low - 0xDC00)
            }
            0xDC00..=0xDFFF => return Err(unpaired(self)),
            _ => unit,
        };
        Ok(char::from_u32(code).expect("a scalar value outside the surrogates"))
    }

    fn hex4(&mut self) -> Result<u32, Malformed> {
        let mut unit = 0;
        for _ in 0..4 {
            let digit = self
                .peek()
                .and_then(|b| (b as char).to_digit(16))
                .ok_or_else(|| self.fail_here("expected 4 hex digits after \\u"))?;
            unit = unit * 16 + digit;
            self.pos += 1;
        }
        Ok(unit)
    }
}

/// A short sentence: a key can be as long as the payload, and the detail is a header line.
fn duplicate(key: &str) -> String {
    if key.chars().count() <= 64 {
        format!("the key {key:?} appears twice in one object")
    } else {
        "a key appears twice in one object".to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nested(depth: usize) -> String {
        format!(
            "{}{}{}",
            "{\"a\":".repeat(depth - 1),
            "{}",
            "}".repeat(depth - 1)
        )
    }

    #[test]
    fn what_rfc_8259_reads_is_read_as_serde_json_reads_it() {
        for text in [
            r#"{"a":[1,-2,3.5,1e2,true,false,null,"x\u00e9\ud83d\ude00\n\/"],"b":{}}"#,
            " \t\r\n{ \"k\" : [ ] } \n",
            r#"{"max":18446744073709551615,"min":-9223372036854775808,"tiny":1e-400}"#,
            r#"{"big":18446744073709551616,"neg":-9223372036854775809,"edge":1.7976931348623157e308}"#,
        ] {
            let ours = parse(text).unwrap();
            let theirs: Value = serde_json::from_str(text).unwrap();
            assert_eq!(ours, theirs, "{text}");
        }
    }

    #[test]
    fn integers_are_unsigned_only_when_written_as_nonnegative_integers() {
        let v = parse(r#"[0, 18446744073709551615, 18446744073709551616, -0, 137.0, 1e2, -5]"#)
            .unwrap();
        let as_u64: Vec<_> = v.as_array().unwrap().iter().map(Value::as_u64).collect();
        assert_eq!(
            as_u64,
            [Some(0), Some(u64::MAX), None, None, None, None, None]
        );
    }

    #[test]
    fn the_contract_s_malformations_are_refused_anywhere() {
        for (text, problem) in [
            (r#"{"a":1,"a":2}"#, "the key \"a\" appears twice"),
            (r#"{"a":1,"\u0061":2}"#, "the key \"a\" appears twice"),
            (
                r#"{"x":[{"d":{"k":1,"k":1}}]}"#,
                "the key \"k\" appears twice",
            ),
            (r#"{"x":1e400}"#, "beyond the range of a double"),
            (r#"{"x":-1e400}"#, "beyond the range of a double"),
            (
                r#"{"x":1.7976931348623159e308}"#,
                "beyond the range of a double",
            ),
            (r#"{"x":"\ud800"}"#, "unpaired surrogate"),
            (r#"{"x":"\ud800x"}"#, "unpaired surrogate"),
            (r#"{"x":"\ud800\u0041"}"#, "unpaired surrogate"),
            (r#"{"x":"\udc00\ud800"}"#, "unpaired surrogate"),
            (r#"{"\ud800":1}"#, "unpaired surrogate"),
        ] {
            let e = parse(text).unwrap_err();
            assert!(e.problem.contains(problem), "{text}: {e}");
        }
    }

    #[test]
    fn what_rfc_8259_does_not_allow_is_refused() {
        for text in [
            "",
            "{",
            "{}x",
            "{} {}",
            "{'a':1}",
            "{\"a\" 1}",
            "{\"a\":1,}",
            "[1,]",
            "{\"a\":01}",
            "{\"a\":1.}",
            "{\"a\":.5}",
            "{\"a\":+1}",
            "{\"a\":-}",
            "{\"a\":1e}",
            "{\"a\":tru}",
            "{\"a\":\"\t\"}",
            "{\"a\":\"\\x\"}",
            "{\"a\":\"\\u12\"}",
            "{\"a\":\"open}",
            "\u{feff}{}",
            "{\"a\":NaN}",
            "{\"a\":Infinity}",
            "{\u{a0}}",
        ] {
            assert!(parse(text).is_err(), "{text:?} should be refused");
        }
    }

    #[test]
    fn members_are_the_top_level_keys_with_their_text_as_sent() {
        let text = r#" {"a" : 1e2 ,"\u0062":{"c":[1]},"d":"\u0041"} "#;
        let found = members(text).unwrap().unwrap();
        let read: Vec<(&str, &str)> = found
            .iter()
            .map(|(k, span)| (k.as_str(), &text[span.clone()]))
            .collect();
        assert_eq!(
            read,
            [("a", "1e2"), ("b", r#"{"c":[1]}"#), ("d", r#""\u0041""#)]
        );
        assert_eq!(members("[1]"), Ok(None));
        assert!(members(r#"{"a":1,"a":2}"#).is_err());
        assert!(members(r#"{"a":1} x"#).is_err());
    }

    #[test]
    fn nesting_of_128_is_read_and_129_is_not() {
        assert!(parse(&nested(128)).is_ok());
        let e = parse(&nested(129)).unwrap_err();
        assert!(e.problem.contains("deeper than 128"), "{e}");
        // Arrays count as objects do, and the top level counts.
        let arrays = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
        assert!(parse(&arrays(128)).is_ok());
        assert!(parse(&arrays(129)).is_err());
        // serde_json stops one level short, which is why this reader exists.
        assert!(serde_json::from_str::<Value>(&nested(128)).is_err());
        assert!(serde_json::from_str::<Value>(&nested(127)).is_ok());
    }
}
