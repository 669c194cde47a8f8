//! Finds the line:column of a JSON path in a config file's text, so that problems found after
//! parsing (a relative URL, an unknown key) point at the right place.
use std::fmt;

/// One step of a JSON path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    Key(String),
    Index(usize),
}

/// 1-based line and column (in characters).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Position {
    pub line: usize,
    pub column: usize,
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.line, self.column)
    }
}

/// Renders a path as `openAI.models["gpt-4o"].endpoints[0].path`.
pub fn display_path(path: &[Segment]) -> String {
    let mut out = String::new();
    for segment in path {
        match segment {
            Segment::Key(key) => {
                let plain = !key.is_empty()
                    && key
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
                if plain {
                    if !out.is_empty() {
                        out.push('.');
                    }
                    out.push_str(key);
                } else {
                    out.push_str(&format!("[{}]", serde_json::Value::from(key.as_str())));
                }
            }
            Segment::Index(index) => out.push_str(&format!("[{index}]")),
        }
    }
    if out.is_empty() {
        out.push('$');
    }
    out
}

/// Where `path` is in `text`: the key of the last member when the path ends in a key (that is
/// what an unknown-key warning should point at), the element otherwise. `None` when the text
/// does not contain the path (the caller falls back to the start of the file).
pub fn locate(text: &str, path: &[Segment]) -> Option<Position> {
    let mut scanner = Scanner {
        bytes: text.as_bytes(),
        at: 0,
    };
    scanner.skip_whitespace();
    for (depth, segment) in path.iter().enumerate() {
        let last = depth + 1 == path.len();
        match segment {
            Segment::Key(key) => {
                let key_at = scanner.find_member(key)?;
                if last {
                    return Some(position_of(text, key_at));
                }
            }
            Segment::Index(index) => scanner.find_element(*index)?,
        }
    }
    Some(position_of(text, scanner.at))
}

/// The positions of every element of the array at `path`, in one pass over the text (a file of
/// 100,000 key entries must not be scanned once per entry). `None` when `path` is not an array.
pub fn element_positions(text: &str, path: &[Segment]) -> Option<Vec<Position>> {
    let mut scanner = Scanner {
        bytes: text.as_bytes(),
        at: 0,
    };
    scanner.skip_whitespace();
    for segment in path {
        match segment {
            Segment::Key(key) => {
                scanner.find_member(key)?;
            }
            Segment::Index(index) => scanner.find_element(*index)?,
        }
    }
    if scanner.peek()? != b'[' {
        return None;
    }
    scanner.at += 1;
    let mut offsets = Vec::new();
    loop {
        scanner.skip_whitespace();
        if scanner.peek()? == b']' {
            break;
        }
        offsets.push(scanner.at);
        scanner.skip_value()?;
        scanner.skip_whitespace();
        match scanner.peek()? {
            b',' => scanner.at += 1,
            _ => break,
        }
    }
    // Offsets grow: count lines and columns (in characters) incrementally.
    let bytes = text.as_bytes();
    let (mut line, mut column, mut counted) = (1, 1, 0);
    let positions = offsets
        .into_iter()
        .map(|offset| {
            for byte in &bytes[counted..offset] {
                if *byte == b'\n' {
                    line += 1;
                    column = 1;
                } else if byte & 0xC0 != 0x80 {
                    // Not a UTF-8 continuation byte: a new character.
                    column += 1;
                }
            }
            counted = offset;
            Position { line, column }
        })
        .collect();
    Some(positions)
}

pub fn position_of(text: &str, offset: usize) -> Position {
    let before = &text.as_bytes()[..offset.min(text.len())];
    let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
    let line_start = before
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |i| i + 1);
    let column = String::from_utf8_lossy(&before[line_start..])
        .chars()
        .count()
        + 1;
    Position { line, column }
}

struct Scanner<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Scanner<'_> {
    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.at).copied()
    }

    fn skip_whitespace(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\n' | b'\r' | b'\t')) {
            self.at += 1;
        }
    }

    /// Expects an object at the cursor; leaves the cursor on the value of member `key` and
    /// returns the offset of the key.
    fn find_member(&mut self, key: &str) -> Option<usize> {
        if self.peek()? != b'{' {
            return None;
        }
        self.at += 1;
        loop {
            self.skip_whitespace();
            if self.peek()? == b'}' {
                return None;
            }
            let key_at = self.at;
            let name = self.read_string()?;
            self.skip_whitespace();
            if self.peek()? != b':' {
                return None;
            }
            self.at += 1;
            self.skip_whitespace();
            if name == key {
                return Some(key_at);
            }
            self.skip_value()?;
            self.skip_whitespace();
            match self.peek()? {
                b',' => self.at += 1,
                _ => return None,
            }
        }
    }

    /// Expects an array at the cursor; leaves the cursor on element `index`.
    fn find_element(&mut self, index: usize) -> Option<()> {
        if self.peek()? != b'[' {
            return None;
        }
        self.at += 1;
        for _ in 0..index {
            self.skip_whitespace();
            self.skip_value()?;
            self.skip_whitespace();
            if self.peek()? != b',' {
                return None;
            }
            self.at += 1;
        }
        self.skip_whitespace();
        (self.peek()? != b']').then_some(())
    }

    /// Reads a string at the cursor and returns it decoded.
    fn read_string(&mut self) -> Option<String> {
        let start = self.at;
        self.skip_string()?;
        let raw = std::str::from_utf8(&self.bytes[start..self.at]).ok()?;
        if raw.contains('\\') {
            serde_json::from_str(raw).ok()
        } else {
            Some(raw[1..raw.len() - 1].to_owned())
        }
    }

    fn skip_string(&mut self) -> Option<()> {
        if self.peek()? != b'"' {
            return None;
        }
        self.at += 1;
        loop {
            match self.peek()? {
                b'"' => {
                    self.at += 1;
                    return Some(());
                }
                b'\\' => self.at += 2,
                _ => self.at += 1,
            }
        }
    }

    fn skip_value(&mut self) -> Option<()> {
        match self.peek()? {
            b'"' => self.skip_string(),
            b'{' | b'[' => {
                let mut depth = 0usize;
                loop {
                    match self.peek()? {
                        b'"' => {
                            self.skip_string()?;
                            continue;
                        }
                        b'{' | b'[' => depth += 1,
                        b'}' | b']' => {
                            depth -= 1;
                            if depth == 0 {
                                self.at += 1;
                                return Some(());
                            }
                        }
                        _ => {}
                    }
                    self.at += 1;
                }
            }
            _ => {
                while !matches!(
                    self.peek(),
                    None | Some(b',' | b'}' | b']' | b' ' | b'\n' | b'\r' | b'\t')
                ) {
                    self.at += 1;
                }
                Some(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"{
  "openAI": {
    "prefix": "x-",
    "models": {
      "gpt-4o": { "endpoints": [
        {"path": "a", "note": "}]\"{"},
        {"path": "v1/chat/completions", "target_modle_name": "gpt-4o"}
      ]}
    }
  }
}"#;

    fn key(k: &str) -> Segment {
        Segment::Key(k.to_owned())
    }

    fn check(path: &[Segment], expected: Option<(usize, usize)>) {
        let found = locate(TEXT, path).map(|p| (p.line, p.column));
        assert_eq!(found, expected, "path {}", display_path(path));
    }

    #[test]
    fn finds_keys_and_elements_past_tricky_strings() {
        check(&[key("openAI"), key("prefix")], Some((3, 5)));
        check(
            &[
                key("openAI"),
                key("models"),
                key("gpt-4o"),
                key("endpoints"),
                Segment::Index(1),
                key("target_modle_name"),
            ],
            Some((7, 41)),
        );
        check(
            &[
                key("openAI"),
                key("models"),
                key("gpt-4o"),
                key("endpoints"),
                Segment::Index(1),
            ],
            Some((7, 9)),
        );
        check(&[key("nope")], None);
        check(
            &[
                key("openAI"),
                key("models"),
                key("gpt-4o"),
                key("endpoints"),
                Segment::Index(5),
            ],
            None,
        );
    }

    #[test]
    fn element_positions_match_locate() {
        let path = [
            key("openAI"),
            key("models"),
            key("gpt-4o"),
            key("endpoints"),
        ];
        let positions = element_positions(TEXT, &path).unwrap();
        assert_eq!(positions.len(), 2);
        for (index, position) in positions.iter().enumerate() {
            let mut element = path.to_vec();
            element.push(Segment::Index(index));
            assert_eq!(Some(*position), locate(TEXT, &element));
        }
        assert_eq!(element_positions(TEXT, &[key("openAI")]), None);
    }

    #[test]
    fn paths_display_like_javascript() {
        assert_eq!(
            display_path(&[
                key("openAI"),
                key("models"),
                key("meta/llama 3"),
                Segment::Index(0)
            ]),
            r#"openAI.models["meta/llama 3"][0]"#
        );
        assert_eq!(display_path(&[]), "$");
    }
}
