//! The template parser: turns the configured string into components of literal text,
//! variables and optional groups, rejecting malformed syntax with a byte position.

use super::{TemplateError, Variable};

/// Text or a variable inside an optional group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Atom {
    Text(String),
    Var(Variable),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Piece {
    Atom(Atom),
    /// Renders only if every variable in it is non-empty.
    Group(Vec<Atom>),
}

/// One path component of a template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Component {
    pub(super) pieces: Vec<Piece>,
    /// Set on the last component when it ends in `.$format`/`.$format_upper`: that
    /// variable is the extension, kept whole when the name is cut. The `.` is not in
    /// `pieces`.
    pub(super) ext: Option<Variable>,
}

/// If `c` ends with text ending in `.` followed by `$format`/`$format_upper` (outside a
/// group), moves that variable to `c.ext`.
pub(super) fn split_extension(c: &mut Component) {
    let n = c.pieces.len();
    if n < 2 {
        return;
    }
    let ext = match &c.pieces[n - 1] {
        Piece::Atom(Atom::Var(v @ (Variable::Format | Variable::FormatUpper))) => *v,
        _ => return,
    };
    let Piece::Atom(Atom::Text(text)) = &mut c.pieces[n - 2] else {
        return;
    };
    if !text.ends_with('.') {
        return;
    }
    text.pop();
    let drop_text = text.is_empty();
    c.pieces.truncate(if drop_text { n - 2 } else { n - 1 });
    c.ext = Some(ext);
}

pub(super) struct Parser<'s> {
    src: &'s str,
    pos: usize,
    components: Vec<Component>,
    pieces: Vec<Piece>,
    component_start: usize,
    /// The open group and where its `{` is.
    group: Option<(Vec<Atom>, usize)>,
}

impl<'s> Parser<'s> {
    pub(super) fn new(src: &'s str) -> Parser<'s> {
        Parser {
            src,
            pos: 0,
            components: Vec::new(),
            pieces: Vec::new(),
            component_start: 0,
            group: None,
        }
    }

    fn peek(&self) -> Option<char> {
        self.src[self.pos..].chars().next()
    }

    pub(super) fn run(mut self) -> Result<Vec<Component>, TemplateError> {
        while let Some(c) = self.peek() {
            let at = self.pos;
            self.pos += c.len_utf8();
            match c {
                '$' => self.dollar(at)?,
                '{' if self.peek() == Some('{') => self.escaped('{'),
                '}' if self.peek() == Some('}') => self.escaped('}'),
                '{' if self.group.is_some() => {
                    return Err(TemplateError::NestedGroup { position: at })
                }
                '{' => self.group = Some((Vec::new(), at)),
                '}' => match self.group.take() {
                    Some((atoms, _)) => self.pieces.push(Piece::Group(atoms)),
                    None => return Err(TemplateError::UnmatchedClose { position: at }),
                },
                '/' if self.group.is_some() => {
                    return Err(TemplateError::SlashInGroup { position: at })
                }
                '/' => self.end_component(at)?,
                _ => self.text(c),
            }
        }
        if let Some((_, position)) = self.group {
            return Err(TemplateError::UnclosedGroup { position });
        }
        self.end_component(self.src.len())?;
        Ok(self.components)
    }

    fn escaped(&mut self, c: char) {
        self.pos += 1;
        self.text(c);
    }

    fn dollar(&mut self, at: usize) -> Result<(), TemplateError> {
        let rest = &self.src[self.pos..];
        let name = match rest.chars().next() {
            Some('$') => {
                self.pos += 1;
                self.text('$');
                return Ok(());
            }
            Some('{') => {
                let Some(len) = rest.find('}') else {
                    return Err(TemplateError::UnclosedVariable { position: at });
                };
                self.pos += len + 1;
                &rest[1..len]
            }
            _ => {
                let len = rest
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .unwrap_or(rest.len());
                if len == 0 {
                    return Err(TemplateError::MissingVariableName { position: at });
                }
                self.pos += len;
                &rest[..len]
            }
        };
        let var = Variable::from_name(name).ok_or_else(|| TemplateError::UnknownVariable {
            name: name.to_owned(),
            position: at,
        })?;
        self.atom(Atom::Var(var));
        Ok(())
    }

    fn text(&mut self, c: char) {
        let atoms_last = match &mut self.group {
            Some((atoms, _)) => atoms.last_mut(),
            None => match self.pieces.last_mut() {
                Some(Piece::Atom(a)) => Some(a),
                _ => None,
            },
        };
        match atoms_last {
            Some(Atom::Text(t)) => t.push(c),
            _ => self.atom(Atom::Text(c.to_string())),
        }
    }

    fn atom(&mut self, a: Atom) {
        match &mut self.group {
            Some((atoms, _)) => atoms.push(a),
            None => self.pieces.push(Piece::Atom(a)),
        }
    }

    fn end_component(&mut self, at: usize) -> Result<(), TemplateError> {
        let pieces = std::mem::take(&mut self.pieces);
        let blank = pieces.iter().all(|p| match p {
            Piece::Atom(Atom::Text(t)) => t.trim().is_empty(),
            _ => false,
        });
        if blank {
            return Err(TemplateError::EmptyComponent {
                position: self.component_start,
            });
        }
        self.components.push(Component { pieces, ext: None });
        self.component_start = at + 1;
        Ok(())
    }
}

impl Component {
    /// Whether `var` appears anywhere in this component (its extension included).
    pub(super) fn uses(&self, var: Variable) -> bool {
        self.ext == Some(var)
            || self.pieces.iter().any(|p| match p {
                Piece::Atom(a) => a.is_var(var),
                Piece::Group(atoms) => atoms.iter().any(|a| a.is_var(var)),
            })
    }
}

impl Atom {
    fn is_var(&self, var: Variable) -> bool {
        matches!(self, Atom::Var(v) if *v == var)
    }
}
