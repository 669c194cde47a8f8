//! Byte searches eight bytes at a time (SWAR: "determine if a word has a byte less than n" from
//! Bit Twiddling Hacks), for the short strings of the request path: the access line's values
//! (`telemetry`), the body probe's strings (`pipeline::identify`), the usage walk's strings
//! (`proxy::usage`). Hand-written: `memchr`'s set-up cost more than these searches (strings of
//! a few dozen bytes), a byte-by-byte loop about 13 instructions per byte, and no crate searches
//! for "a control byte, a quote or a backslash" at once (issue 16).

const ONES: u64 = u64::from_le_bytes([0x01; 8]);
const HIGHS: u64 = u64::from_le_bytes([0x80; 8]);
/// Fills the last word of a search: no search looks for it.
const PADDING: u8 = b'a';

/// The top bit of each byte of `word` below `n` (n ≤ 128). Exact up to the lowest flagged byte
/// (a borrow may flag bytes above it, never below), so the lowest flag is the first such byte,
/// and no flag at all means none.
#[inline]
fn below(word: u64, n: u8) -> u64 {
    word.wrapping_sub(ONES * u64::from(n)) & !word & HIGHS
}

/// The bytes of `word` equal to `byte`, flagged as [`below`] flags them.
#[inline]
fn equal(word: u64, byte: u8) -> u64 {
    below(word ^ (ONES * u64::from(byte)), 1)
}

/// The position of the first byte at or after `from` that `flags` flags, a word at a time; `None`
/// when there is none or `from` is past the end. The bytes after the last whole word are read as
/// one more word without copying them into a padded block (a variable-length copy is a `memcpy`
/// call, about a third of a short string's search, issue 16): the word that ends the slice,
/// shifted past the bytes already searched, or, in a slice shorter than a word, the bytes put
/// in one by one; the bytes past the end read as [`PADDING`].
#[inline]
fn position(bytes: &[u8], from: usize, flags: impl Fn(u64) -> u64) -> Option<usize> {
    let rest = bytes.get(from..).filter(|rest| !rest.is_empty())?;
    // Whole words without a bounds check each (a long body's strings, issue 16).
    let (words, tail) = rest.as_chunks::<8>();
    for (i, word) in words.iter().enumerate() {
        let found = flags(u64::from_le_bytes(*word));
        if found != 0 {
            return Some(from + i * 8 + found.trailing_zeros() as usize / 8);
        }
    }
    if tail.is_empty() {
        return None;
    }
    let from = from + words.len() * 8;
    // 1 to 7 bytes: every shift below is less than 64 bits.
    let padding = (ONES * u64::from(PADDING)) << (tail.len() * 8);
    let word = match bytes.last_chunk::<8>() {
        Some(last) => (u64::from_le_bytes(*last) >> ((8 - tail.len()) * 8)) | padding,
        None => tail.iter().enumerate().fold(padding, |word, (i, &byte)| {
            word | u64::from(byte) << (i * 8)
        }),
    };
    let found = flags(word);
    (found != 0).then(|| from + found.trailing_zeros() as usize / 8)
}

/// Where the first byte a JSON string cannot hold as it is (`"`, `\` or a control byte) is, at
/// or after `from`.
#[inline]
pub fn json_special(bytes: &[u8], from: usize) -> Option<usize> {
    position(bytes, from, |word| {
        below(word, 0x20) | equal(word, b'"') | equal(word, b'\\')
    })
}

/// Where the first byte is that a JSON string cannot hold as it is or that is not printable ASCII
/// (`"`, `\`, a control byte, DEL, any byte from 0x80), at or after `from`: a text without one
/// is written into a JSON string as it is and reads the same through `HeaderValue::to_str`.
#[inline]
pub fn json_special_or_not_printable(bytes: &[u8], from: usize) -> Option<usize> {
    position(bytes, from, |word| {
        below(word, 0x20)
            | equal(word, b'"')
            | equal(word, b'\\')
            | equal(word, 0x7f)
            | word & HIGHS
    })
}

/// Whether every byte is visible ASCII or a tab: what `http::HeaderValue::to_str` asks of a
/// header value, a word at a time (the admit stage reads the client key this way).
pub fn header_text(bytes: &[u8]) -> bool {
    // A byte below a space or at DEL and above sends the text to the exact test, which lets
    // tabs through.
    position(bytes, 0, |word| {
        below(word, 0x20) | equal(word, 0x7f) | (word & HIGHS)
    })
    .is_none()
        || bytes
            .iter()
            .all(|&b| (0x20..0x7f).contains(&b) || b == b'\t')
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The byte-by-byte answers, for every start in texts that put the bytes sought at every
    /// offset of a word and past the last word.
    #[test]
    fn searches_find_what_a_byte_loop_finds() {
        let special = |b: &u8| *b == b'"' || *b == b'\\' || *b < 0x20;
        let not_printable = |b: &u8| special(b) || *b >= 0x7f;
        let mut texts: Vec<Vec<u8>> = vec![Vec::new(), b"plain ascii text, no specials".to_vec()];
        for len in 0..20 {
            for at in 0..len {
                for byte in [
                    b'"', b'\\', 0x00, 0x1f, b'\n', 0x20, 0x7e, 0x7f, 0x80, 0xff, b'a',
                ] {
                    let mut text = vec![b'x'; len];
                    text[at] = byte;
                    texts.push(text);
                }
            }
        }
        texts.push("é\"ü\\".as_bytes().to_vec());
        for text in &texts {
            for from in 0..=text.len() + 1 {
                let expected = |is: &dyn Fn(&u8) -> bool| {
                    text.get(from..)
                        .and_then(|rest| rest.iter().position(is))
                        .map(|i| from + i)
                };
                assert_eq!(
                    json_special(text, from),
                    expected(&special),
                    "{text:?} {from}"
                );
                assert_eq!(
                    json_special_or_not_printable(text, from),
                    expected(&not_printable),
                    "{text:?} {from}"
                );
            }
        }
    }

    /// `HeaderValue::to_str`'s answer, for texts with each kind of byte at every offset of a
    /// word and past the last word.
    #[test]
    fn header_text_is_what_header_values_read_as_text() {
        for len in 0..20 {
            for at in 0..len {
                for byte in [0x00, b'\t', b'\n', 0x1f, b' ', b'~', 0x7f, 0x80, 0xff, b'a'] {
                    let mut text = vec![b'x'; len];
                    text[at] = byte;
                    let visible = text
                        .iter()
                        .all(|&b| (0x20..0x7f).contains(&b) || b == b'\t');
                    assert_eq!(header_text(&text), visible, "{text:?}");
                    if let Ok(value) = actix_web::http::header::HeaderValue::from_bytes(&text) {
                        assert_eq!(header_text(&text), value.to_str().is_ok(), "{text:?}");
                    }
                }
            }
        }
        assert!(header_text(b""));
        assert!(!header_text("Bearer clé".as_bytes()));
    }
}
