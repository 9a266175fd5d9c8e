//! Decoding of chunks: a cursor over the bytes, and events read lazily (a reader looking for
//! some events skips the others by their body length).

use super::dictionary::*;
use super::encode::*;
use crate::model::{AttrValue, Event, EventKind, IdentityChange, Product, Promotion, TimestampMs};
use crate::varint::{read_varint, VarintError};
use std::collections::BTreeMap;

pub(super) struct Cursor<'a> {
    pub(super) bytes: &'a [u8],
    pub(super) pos: usize,
}

pub(super) type Decoded<T> = Result<T, String>;

impl<'a> Cursor<'a> {
    pub(super) fn new(bytes: &'a [u8]) -> Self {
        Cursor { bytes, pos: 0 }
    }

    pub(super) fn done(&self) -> bool {
        self.pos >= self.bytes.len()
    }

    pub(super) fn byte(&mut self) -> Decoded<u8> {
        let b = *self
            .bytes
            .get(self.pos)
            .ok_or_else(|| format!("event log ends inside a record at byte {}", self.pos))?;
        self.pos += 1;
        Ok(b)
    }

    pub(super) fn varint(&mut self) -> Decoded<u64> {
        read_varint(self.bytes, &mut self.pos).map_err(|e| match e {
            VarintError::Truncated => {
                format!("event log ends inside a record at byte {}", self.pos)
            }
            VarintError::TooLong => format!("varint too long at byte {}", self.pos),
        })
    }

    pub(super) fn take(&mut self, n: usize) -> Decoded<&'a [u8]> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.bytes.len())
            .ok_or_else(|| format!("event log ends inside a field at byte {}", self.pos))?;
        let s = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    pub(super) fn bytes_field(&mut self) -> Decoded<&'a [u8]> {
        let n = self.varint()? as usize;
        self.take(n)
    }

    pub(super) fn text(&mut self) -> Decoded<String> {
        String::from_utf8(self.bytes_field()?.to_vec())
            .map_err(|_| "event log text is not utf-8".into())
    }

    pub(super) fn name_ref(&mut self) -> Decoded<NameRef<'a>> {
        match self.varint()? {
            0 => Ok(NameRef::Inline(
                std::str::from_utf8(self.bytes_field()?)
                    .map_err(|_| "event log name is not utf-8")?,
            )),
            c => Ok(NameRef::Code((c - 1) as u32)),
        }
    }

    pub(super) fn name(&mut self, dict: &Dictionary) -> Decoded<String> {
        self.name_ref()?.resolve(dict).map(str::to_string)
    }

    pub(super) fn opt_name(&mut self, dict: &Dictionary) -> Decoded<Option<String>> {
        match self.byte()? {
            0 => Ok(None),
            _ => self.name(dict).map(Some),
        }
    }

    pub(super) fn opt_text(&mut self) -> Decoded<Option<String>> {
        match self.byte()? {
            0 => Ok(None),
            _ => self.text().map(Some),
        }
    }

    pub(super) fn opt_number(&mut self) -> Decoded<Option<f64>> {
        match self.byte()? {
            0 => Ok(None),
            1 => Ok(Some(unzigzag(self.varint()?) as f64)),
            _ => {
                let b = self.take(8)?;
                Ok(Some(f64::from_le_bytes(b.try_into().expect("8 bytes"))))
            }
        }
    }

    pub(super) fn products(&mut self, dict: &Dictionary) -> Decoded<Vec<Product>> {
        let n = self.varint()? as usize;
        let mut out = Vec::with_capacity(n.min(128));
        for _ in 0..n {
            out.push(Product {
                id: self.opt_text()?,
                name: self.opt_text()?,
                brand: self.opt_name(dict)?,
                category: self.opt_name(dict)?,
                variant: self.opt_name(dict)?,
                price: self.opt_number()?,
                quantity: self.opt_number()?,
            });
        }
        Ok(out)
    }

    pub(super) fn attr_value(&mut self) -> Decoded<AttrValue> {
        Ok(match self.byte()? {
            0 => AttrValue::String(self.text()?),
            1 => AttrValue::Number(self.opt_number()?.unwrap_or_default()),
            2 => AttrValue::Bool(false),
            3 => AttrValue::Bool(true),
            4 => AttrValue::Date(unzigzag(self.varint()?)),
            5 => {
                let n = self.varint()? as usize;
                let mut items = Vec::with_capacity(n.min(128));
                for _ in 0..n {
                    items.push(self.text()?);
                }
                AttrValue::List(items)
            }
            _ => AttrValue::Null,
        })
    }
}

/// A name as written: a dictionary code or inline bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NameRef<'a> {
    Code(u32),
    Inline(&'a str),
}

impl<'a> NameRef<'a> {
    pub fn resolve<'d>(self, dict: &'d Dictionary) -> Decoded<&'d str>
    where
        'a: 'd,
    {
        match self {
            NameRef::Inline(s) => Ok(s),
            NameRef::Code(c) => dict
                .name(c)
                .ok_or_else(|| format!("event log names code {c}, which the dictionary lacks")),
        }
    }
}

/// One logged event, decoded up to its selector: the body is read only on demand.
#[derive(Debug, Clone, Copy)]
pub struct LoggedEvent<'a> {
    pub at: TimestampMs,
    tag: u8,
    name: Option<NameRef<'a>>,
    body: &'a [u8],
    /// The whole record (time delta included).
    pub(super) record: &'a [u8],
}

impl<'a> LoggedEvent<'a> {
    /// The event's type and selector name (lowercased), as criteria select events.
    pub fn selector(&self, dict: &Dictionary) -> Decoded<(String, String)> {
        let name = match self.name {
            Some(n) => n.resolve(dict)?.to_lowercase(),
            None => String::new(),
        };
        Ok(match self.tag & KIND_MASK {
            KIND_OTHER => (name, String::new()),
            KIND_PROMOTION => ("commerce_event".into(), format!("promotion_{name}")),
            KIND_IMPRESSION => ("commerce_event".into(), crate::model::IMPRESSION.into()),
            tag => {
                let event_type = tag_event_type(tag)
                    .ok_or_else(|| format!("unknown event kind {tag} in the event log"))?;
                let name = match tag {
                    KIND_CUSTOM | KIND_SCREEN_VIEW | KIND_COMMERCE => name,
                    _ => String::new(),
                };
                (event_type.into(), name)
            }
        })
    }

    /// A key that identifies the selector without resolving names: for memoising decisions.
    pub fn selector_key(&self) -> (u8, Option<NameRef<'a>>) {
        (self.tag, self.name)
    }

    /// The kind tag as written, flags included.
    pub(super) fn tag(&self) -> u8 {
        self.tag
    }

    pub(super) fn body(&self) -> &'a [u8] {
        self.body
    }

    /// The whole event.
    pub fn decode(&self, dict: &Dictionary) -> Decoded<Event> {
        let name = |n: Option<NameRef<'a>>| -> Decoded<Option<String>> {
            n.map(|n| n.resolve(dict).map(str::to_string)).transpose()
        };
        let mut c = Cursor::new(self.body);
        let kind = match self.tag & KIND_MASK {
            KIND_CUSTOM => EventKind::Custom {
                name: name(self.name)?.unwrap_or_default(),
                custom_type: c.opt_name(dict)?,
            },
            KIND_SCREEN_VIEW => EventKind::ScreenView {
                name: name(self.name)?.unwrap_or_default(),
            },
            KIND_COMMERCE => {
                let action = name(self.name)?.unwrap_or_default();
                EventKind::Commerce {
                    product_action: Some(action).filter(|a| !a.is_empty()),
                    products: c.products(dict)?,
                    total_amount: c.opt_number()?,
                    transaction_id: c.opt_text()?,
                }
            }
            KIND_PROMOTION => {
                let action = name(self.name)?.unwrap_or_default();
                let n = c.varint()? as usize;
                let mut promotions = Vec::with_capacity(n.min(128));
                for _ in 0..n {
                    promotions.push(Promotion {
                        id: c.opt_text()?,
                        name: c.opt_text()?,
                        creative: c.opt_name(dict)?,
                        position: c.opt_name(dict)?,
                    });
                }
                EventKind::Promotion { action, promotions }
            }
            KIND_IMPRESSION => EventKind::Impression {
                list: name(self.name)?,
                products: c.products(dict)?,
            },
            KIND_SESSION_START => EventKind::SessionStart,
            KIND_SESSION_END => EventKind::SessionEnd {
                duration_ms: match c.byte()? {
                    0 => None,
                    _ => Some(unzigzag(c.varint()?)),
                },
            },
            KIND_CRASH_REPORT => EventKind::CrashReport,
            KIND_FIRST_RUN => EventKind::FirstRun,
            KIND_STATE_TRANSITION => EventKind::ApplicationStateTransition {
                transition: c.opt_name(dict)?,
                is_upgrade: c.byte()? != 0,
            },
            KIND_ATTRIBUTE_CHANGE => {
                let attr = c.name(dict)?;
                let new_value = match c.byte()? {
                    0 => None,
                    _ => Some(c.attr_value()?),
                };
                EventKind::UserAttributeChange {
                    name: attr,
                    new_value,
                    deleted: c.byte()? != 0,
                }
            }
            KIND_IDENTITY_CHANGE => EventKind::UserIdentityChange(IdentityChange {
                identity_type: c.name(dict)?,
                old_value: c.opt_text()?,
                new_value: c.opt_text()?,
            }),
            KIND_OPT_OUT => EventKind::OptOut {
                opted_out: c.byte()? != 0,
            },
            KIND_UNINSTALL => EventKind::Uninstall,
            KIND_OTHER => EventKind::Other {
                event_type: name(self.name)?.unwrap_or_default(),
            },
            tag => return Err(format!("unknown event kind {tag} in the event log")),
        };
        let n = c.varint()? as usize;
        let mut attributes = BTreeMap::new();
        for _ in 0..n {
            let k = c.name(dict)?;
            let v = c.text()?;
            attributes.insert(k, v);
        }
        Ok(Event {
            timestamp_ms: self.at,
            kind,
            attributes,
        })
    }
}

/// Reads the events of a chunk body (or a tail) in order.
pub struct ChunkReader<'a> {
    cursor: Cursor<'a>,
    last_ms: TimestampMs,
    failed: bool,
}

impl<'a> ChunkReader<'a> {
    pub fn new(body: &'a [u8]) -> Self {
        ChunkReader {
            cursor: Cursor::new(body),
            last_ms: 0,
            failed: false,
        }
    }

    pub(super) fn read(&mut self) -> Decoded<LoggedEvent<'a>> {
        let start = self.cursor.pos;
        let at = self.last_ms.wrapping_add(unzigzag(self.cursor.varint()?));
        let tag = self.cursor.byte()?;
        let name = match self.cursor.byte()? {
            0 => None,
            _ => Some(self.cursor.name_ref()?),
        };
        let body = self.cursor.bytes_field()?;
        self.last_ms = at;
        Ok(LoggedEvent {
            at,
            tag,
            name,
            body,
            record: &self.cursor.bytes[start..self.cursor.pos],
        })
    }
}

impl<'a> ChunkReader<'a> {
    /// Visits, in order, the events event criteria read (what the iterator yields), without
    /// wrapping each in an `Option<Result<..>>`: the scan loop of backfills and estimates,
    /// where most entries are passed over.
    pub fn for_each_event(
        body: &'a [u8],
        mut visit: impl FnMut(&LoggedEvent<'a>) -> Decoded<()>,
    ) -> Decoded<()> {
        let mut reader = ChunkReader::new(body);
        while !reader.cursor.done() {
            let entry = reader.read()?;
            if entry.tag != KIND_MESSAGE && entry.tag & FLAG_OUTSIDE_TIER == 0 {
                visit(&entry)?;
            }
        }
        Ok(())
    }

    /// The next entry of any kind: message headers, and events whatever their flags.
    pub(super) fn next_entry(&mut self) -> Option<Decoded<LoggedEvent<'a>>> {
        if self.failed || self.cursor.done() {
            return None;
        }
        let r = self.read();
        self.failed = r.is_err();
        Some(r)
    }
}

/// The events event criteria read, in order: message headers and events outside the
/// real-time tier are passed over.
impl<'a> Iterator for ChunkReader<'a> {
    type Item = Decoded<LoggedEvent<'a>>;
    fn next(&mut self) -> Option<Self::Item> {
        loop {
            match self.next_entry()? {
                Ok(e) if e.tag == KIND_MESSAGE || e.tag & FLAG_OUTSIDE_TIER != 0 => continue,
                r => return Some(r),
            }
        }
    }
}
