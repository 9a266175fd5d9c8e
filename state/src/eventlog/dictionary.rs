//! A partition's dictionary of names (event names, attribute keys, brands...), bounded so
//! that no input can grow it without limit.

use std::collections::HashMap;

/// Codes per partition dictionary; names beyond are written inline.
pub const MAX_DICTIONARY_CODES: u32 = 1 << 16;
/// Longer names are written inline: they are values more than names.
pub const MAX_DICTIONARY_NAME_BYTES: usize = 64;

/// A partition's dictionary of names. Codes are never reused nor changed: a chunk written
/// with a code reads the same name for ever.
#[derive(Debug, Default, Clone)]
pub struct Dictionary {
    codes: HashMap<String, u32>,
    names: Vec<String>,
    /// Codes assigned since the last [`Dictionary::take_new`], to be written.
    new_from: usize,
}

impl Dictionary {
    /// A dictionary from its stored entries (code, name), in any order.
    pub fn from_entries(entries: impl IntoIterator<Item = (u32, String)>) -> Result<Self, String> {
        let mut sorted: Vec<(u32, String)> = entries.into_iter().collect();
        sorted.sort_by_key(|(c, _)| *c);
        let mut d = Dictionary::default();
        for (code, name) in sorted {
            if code as usize != d.names.len() {
                return Err(format!(
                    "dictionary code {code} follows {} codes: codes must be dense",
                    d.names.len()
                ));
            }
            d.codes.insert(name.clone(), code);
            d.names.push(name);
        }
        d.new_from = d.names.len();
        Ok(d)
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    pub fn name(&self, code: u32) -> Option<&str> {
        self.names.get(code as usize).map(String::as_str)
    }

    pub fn code_of(&self, name: &str) -> Option<u32> {
        self.codes.get(name).copied()
    }

    /// The code of `name`, assigning one if there is room.
    pub(super) fn intern(&mut self, name: &str) -> Option<u32> {
        if let Some(&c) = self.codes.get(name) {
            return Some(c);
        }
        if name.len() > MAX_DICTIONARY_NAME_BYTES || self.names.len() as u32 >= MAX_DICTIONARY_CODES
        {
            return None;
        }
        let code = self.names.len() as u32;
        self.codes.insert(name.to_string(), code);
        self.names.push(name.to_string());
        Some(code)
    }

    /// The entries assigned since the last call, to write with the chunks that use them.
    pub fn take_new(&mut self) -> Vec<(u32, String)> {
        let out = self.names[self.new_from..]
            .iter()
            .enumerate()
            .map(|(i, n)| ((self.new_from + i) as u32, n.clone()))
            .collect();
        self.new_from = self.names.len();
        out
    }

    /// Forgets the entries not yet taken (their write failed).
    pub fn rollback(&mut self) {
        for name in self.names.drain(self.new_from..) {
            self.codes.remove(&name);
        }
    }
}
