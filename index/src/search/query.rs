//! The search query language, parsed into tantivy queries.
//!
//! ```text
//! query   := or EOF
//! or      := and ("OR" and)*
//! and     := unary (["AND"] unary)*          -- words side by side must all match
//! unary   := ("NOT" | "-") unary | ["+"] primary
//! primary := "(" or ")" | "*" | [FIELD ":"] (PHRASE | RANGE | WORD ["~" [N]])
//! RANGE   := ("[" | "{") (NUMBER | "*") "TO" (NUMBER | "*") ("]" | "}")
//! ```
//!
//! `*` matches every track. A bare word or phrase looks in the default fields (title, artist, album, album artist,
//! genre, composer); `field:` narrows it to one. Text is folded the way the index folds it
//! (lower case, accents removed), so `Björk`, `bjork` and `BJÖRK` are the same word. A word
//! the tokenizer splits (`AC/DC`) is matched as a phrase. `word~` is fuzzy: up to one edit
//! for words of 3 to 5 letters, two beyond; `word~N` says how many (at most 2). Ranges and
//! plain numbers apply to the numeric fields (`year`, `track`, `disc`, `duration` in
//! seconds, `bitrate` in kbit/s, `samplerate`, `channels`); `[` `]` include their ends,
//! `{` `}` exclude them.

use std::ops::Bound;

use tantivy::query::{
    AllQuery, BooleanQuery, EmptyQuery, FuzzyTermQuery, Occur, PhraseQuery, Query, RangeQuery,
    TermQuery,
};
use tantivy::schema::{Field, IndexRecordOption};
use tantivy::tokenizer::TextAnalyzer;
use tantivy::Term;

use super::Fields;

/// Why a query does not parse: what was expected and where (a byte offset).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what} at byte {at} of the query")]
pub struct QueryError {
    /// What is wrong.
    pub what: String,
    /// Byte offset into the query.
    pub at: usize,
}

/// Parses `text` into a tantivy query over `fields`, folding words with `analyzer`.
pub(crate) fn parse(
    text: &str,
    fields: &Fields,
    analyzer: &TextAnalyzer,
) -> Result<Box<dyn Query>, QueryError> {
    parse_ranked(text, fields, analyzer).map(|(q, _)| q)
}

/// [`parse`], and whether every match scores the same (only ranges and `*`, combined
/// with AND and NOT: no term to weigh, no alternatives to count), so that any `limit`
/// matches are the best ones.
pub(crate) fn parse_ranked(
    text: &str,
    fields: &Fields,
    analyzer: &TextAnalyzer,
) -> Result<(Box<dyn Query>, bool), QueryError> {
    let mut p = Parser {
        s: text,
        at: 0,
        fields,
        analyzer: analyzer.clone(),
        weighed: false,
    };
    p.skip_space();
    if p.at == p.s.len() {
        return Err(p.error("an empty query"));
    }
    let q = p.or()?;
    p.skip_space();
    if p.at < p.s.len() {
        return Err(p.error(&format!("unexpected `{}`", p.rest_word())));
    }
    Ok((q, !p.weighed))
}

struct Parser<'a> {
    s: &'a str,
    at: usize,
    fields: &'a Fields,
    analyzer: TextAnalyzer,
    /// A term, phrase, fuzzy word or alternative was parsed: matches score differently.
    weighed: bool,
}

/// What a clause contributes to the conjunction around it.
enum Part {
    Must(Box<dyn Query>),
    Not(Box<dyn Query>),
}

impl Part {
    /// The clause standing alone: a negation matches everything but its operand.
    fn alone(self) -> Box<dyn Query> {
        match self {
            Part::Must(q) => q,
            Part::Not(q) => Box::new(BooleanQuery::new(vec![
                (Occur::Must, Box::new(AllQuery) as Box<dyn Query>),
                (Occur::MustNot, q),
            ])),
        }
    }
}

impl Parser<'_> {
    fn error(&self, what: &str) -> QueryError {
        QueryError {
            what: what.to_string(),
            at: self.at,
        }
    }

    fn rest(&self) -> &str {
        &self.s[self.at..]
    }

    fn rest_word(&self) -> &str {
        let r = self.rest();
        let end = r.find(char::is_whitespace).unwrap_or(r.len());
        &r[..end]
    }

    fn skip_space(&mut self) {
        let r = self.rest();
        self.at += r.len() - r.trim_start().len();
    }

    /// Whether the next word is the operator `op` (upper case, then a space, `(`, `"` or
    /// the end): consumes it when so.
    fn keyword(&mut self, op: &str) -> bool {
        self.skip_space();
        let r = self.rest();
        let ends = r
            .get(op.len()..)
            .is_some_and(|after| after.is_empty() || after.starts_with([' ', '\t', '(', '"']));
        if r.starts_with(op) && ends {
            self.at += op.len();
            true
        } else {
            false
        }
    }

    fn or(&mut self) -> Result<Box<dyn Query>, QueryError> {
        let mut alts = vec![self.and()?];
        while self.keyword("OR") {
            alts.push(self.and()?);
        }
        Ok(if alts.len() == 1 {
            alts.pop().expect("one")
        } else {
            self.weighed = true;
            Box::new(BooleanQuery::new(
                alts.into_iter().map(|q| (Occur::Should, q)).collect(),
            ))
        })
    }

    fn and(&mut self) -> Result<Box<dyn Query>, QueryError> {
        let mut parts = vec![self.unary()?];
        loop {
            self.skip_space();
            if self.at == self.s.len() || self.rest().starts_with(')') || self.keyword_ahead("OR") {
                break;
            }
            self.keyword("AND");
            parts.push(self.unary()?);
        }
        if parts.len() == 1 {
            return Ok(parts.pop().expect("one").alone());
        }
        let mut clauses: Vec<(Occur, Box<dyn Query>)> = Vec::with_capacity(parts.len() + 1);
        for part in parts {
            clauses.push(match part {
                Part::Must(q) => (Occur::Must, q),
                Part::Not(q) => (Occur::MustNot, q),
            });
        }
        if clauses.iter().all(|(o, _)| *o == Occur::MustNot) {
            clauses.push((Occur::Must, Box::new(AllQuery)));
        }
        Ok(Box::new(BooleanQuery::new(clauses)))
    }

    fn keyword_ahead(&mut self, op: &str) -> bool {
        let at = self.at;
        let found = self.keyword(op);
        self.at = at;
        found
    }

    fn unary(&mut self) -> Result<Part, QueryError> {
        self.skip_space();
        if self.keyword("NOT") || self.eat("-") {
            return Ok(match self.unary()? {
                Part::Must(q) => Part::Not(q),
                // NOT NOT x is x.
                Part::Not(q) => Part::Must(q),
            });
        }
        self.eat("+");
        Ok(Part::Must(self.primary()?))
    }

    fn eat(&mut self, s: &str) -> bool {
        if self.rest().starts_with(s) {
            self.at += s.len();
            true
        } else {
            false
        }
    }

    fn primary(&mut self) -> Result<Box<dyn Query>, QueryError> {
        self.skip_space();
        if self.eat("(") {
            let q = self.or()?;
            self.skip_space();
            if !self.eat(")") {
                return Err(self.error("a `)` closing the group"));
            }
            return Ok(q);
        }
        if self.at == self.s.len() {
            return Err(self.error("a word after the operator"));
        }
        if self.rest().starts_with(')') {
            return Err(self.error("a word before `)`"));
        }
        let r = self.rest();
        if r == "*" || r.starts_with("* ") || r.starts_with("*)") {
            self.at += 1;
            return Ok(Box::new(AllQuery));
        }
        let field = self.field_prefix()?;
        let r = self.rest();
        if r.starts_with('"') {
            let phrase = self.phrase()?;
            return self.text_query(field, &phrase, None);
        }
        if r.starts_with('[') || r.starts_with('{') {
            let start = self.at;
            let Some(FieldRef::Number(f)) = field else {
                self.at = start;
                return Err(
                    self.error("a range needs a numeric field, as in `year:[1960 TO 1969]`")
                );
            };
            return self.range(f);
        }
        let (word, fuzzy) = self.word()?;
        if let Some(FieldRef::Number(f)) = field {
            let n: u64 = word
                .parse()
                .map_err(|_| self.error(&format!("`{word}` is not a number")))?;
            self.weighed = true;
            return Ok(Box::new(TermQuery::new(
                Term::from_field_u64(f, n),
                IndexRecordOption::Basic,
            )));
        }
        self.text_query(field, &word, fuzzy)
    }

    /// `name:` before a value, resolved; `None` when the next word has no field.
    fn field_prefix(&mut self) -> Result<Option<FieldRef>, QueryError> {
        let r = self.rest();
        let name_len = r
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(r.len());
        if name_len == 0 || !r[name_len..].starts_with(':') {
            return Ok(None);
        }
        let name = r[..name_len].to_ascii_lowercase();
        let found = self.fields.by_name(&name).ok_or_else(|| {
            self.error(&format!(
                "unknown field `{name}` (fields: {})",
                super::FIELD_NAMES.join(", ")
            ))
        })?;
        self.at += name_len + 1;
        Ok(Some(found))
    }

    fn phrase(&mut self) -> Result<String, QueryError> {
        let open = self.at;
        self.at += 1;
        match self.rest().find('"') {
            Some(end) => {
                let text = self.rest()[..end].to_string();
                self.at += end + 1;
                Ok(text)
            }
            None => {
                self.at = open;
                Err(self.error("an unclosed `\"`"))
            }
        }
    }

    /// A bare word and its fuzzy distance (`word~`, `word~N`).
    fn word(&mut self) -> Result<(String, Option<Option<u8>>), QueryError> {
        let r = self.rest();
        let end = r
            .find(|c: char| c.is_whitespace() || c == '(' || c == ')' || c == '"')
            .unwrap_or(r.len());
        let token = &r[..end];
        if token.is_empty() {
            return Err(self.error("a word"));
        }
        let (word, fuzzy) = match token.rfind('~') {
            Some(tilde) if tilde > 0 => {
                let n = &token[tilde + 1..];
                let distance = match n {
                    "" => None,
                    n => match n.parse::<u8>() {
                        Ok(d) if d <= 2 => Some(d),
                        _ => {
                            return Err(
                                self.error(&format!("`~{n}`: a fuzzy distance is 0, 1 or 2"))
                            )
                        }
                    },
                };
                (&token[..tilde], Some(distance))
            }
            _ => (token, None),
        };
        let word = word.to_string();
        self.at += end;
        Ok((word, fuzzy))
    }

    fn range(&mut self, field: Field) -> Result<Box<dyn Query>, QueryError> {
        let inclusive_low = self.rest().starts_with('[');
        self.at += 1;
        let low = self.bound_value()?;
        if !self.keyword("TO") {
            return Err(self.error("`TO` in the range"));
        }
        let high = self.bound_value()?;
        self.skip_space();
        let inclusive_high = if self.eat("]") {
            true
        } else if self.eat("}") {
            false
        } else {
            return Err(self.error("`]` or `}` closing the range"));
        };
        let bound = |v: Option<u64>, inclusive: bool| match v {
            None => Bound::Unbounded,
            Some(n) if inclusive => Bound::Included(Term::from_field_u64(field, n)),
            Some(n) => Bound::Excluded(Term::from_field_u64(field, n)),
        };
        Ok(Box::new(RangeQuery::new(
            bound(low, inclusive_low),
            bound(high, inclusive_high),
        )))
    }

    fn bound_value(&mut self) -> Result<Option<u64>, QueryError> {
        self.skip_space();
        if self.eat("*") {
            return Ok(None);
        }
        let r = self.rest();
        let end = r.find(|c: char| !c.is_ascii_digit()).unwrap_or(r.len());
        if end == 0 {
            return Err(self.error("a number or `*` in the range"));
        }
        let n = r[..end]
            .parse()
            .map_err(|_| self.error("a number that fits 64 bits"))?;
        self.at += end;
        Ok(Some(n))
    }

    /// Words of `text` in `field` (the default fields when `None`): one word is a term (or
    /// a fuzzy term), several a phrase.
    fn text_query(
        &mut self,
        field: Option<FieldRef>,
        text: &str,
        fuzzy: Option<Option<u8>>,
    ) -> Result<Box<dyn Query>, QueryError> {
        self.weighed = true;
        let words = self.fold(text);
        let fields: Vec<Field> = match field {
            Some(FieldRef::Text(f)) => vec![f],
            Some(FieldRef::Number(_)) => unreachable!("numbers are handled by the caller"),
            None => self.fields.default_fields(),
        };
        if words.is_empty() {
            // Nothing searchable (only punctuation): matches nothing rather than failing.
            return Ok(Box::new(EmptyQuery));
        }
        let per_field = |f: Field| -> Box<dyn Query> {
            if words.len() == 1 {
                let term = Term::from_field_text(f, &words[0]);
                return match fuzzy {
                    Some(d) => {
                        let d = d.unwrap_or_else(|| auto_distance(&words[0]));
                        Box::new(FuzzyTermQuery::new(term, d, true))
                    }
                    None => Box::new(TermQuery::new(term, IndexRecordOption::WithFreqs)),
                };
            }
            let terms = words.iter().map(|w| Term::from_field_text(f, w)).collect();
            Box::new(PhraseQuery::new(terms))
        };
        Ok(if fields.len() == 1 {
            per_field(fields[0])
        } else {
            Box::new(BooleanQuery::new(
                fields
                    .into_iter()
                    .map(|f| (Occur::Should, per_field(f)))
                    .collect(),
            ))
        })
    }

    fn fold(&mut self, text: &str) -> Vec<String> {
        let mut stream = self.analyzer.token_stream(text);
        let mut words = Vec::new();
        while stream.advance() {
            words.push(stream.token().text.clone());
        }
        words
    }
}

/// A field named in a query.
#[derive(Clone, Copy)]
pub(crate) enum FieldRef {
    Text(Field),
    Number(Field),
}

/// Edits a bare `word~` allows: none for 1–2 letters, one up to 5, two beyond.
fn auto_distance(word: &str) -> u8 {
    match word.chars().count() {
        0..=2 => 0,
        3..=5 => 1,
        _ => 2,
    }
}
