//! The text of a subscriber's cursor: `c=<cluster>,p0=12,p3=7` (the cluster that gave it,
//! then the last sequence delivered per partition), empty for the beginning, `now` for the
//! current heads. Pure: what the text means against an engine (its heads, its cluster id)
//! is the subscription's to decide.
//!
//! Invariant: any string yields a [`CursorText`] or an error that quotes the bad part; no
//! input panics (a fuzz target, `fuzz/fuzz_targets/cursor.rs`, holds it to that).

use crate::store::Partition;
use std::collections::BTreeMap;

/// A cursor's text, read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CursorText {
    /// `now`: from the current heads (nothing else is read).
    pub now: bool,
    /// The clusters it names (`c=`), in order: each must be the engine's.
    pub clusters: Vec<String>,
    /// The last sequence delivered per partition.
    pub positions: BTreeMap<Partition, u64>,
}

impl CursorText {
    /// Reads `text`; the error says which part is wrong and how.
    pub fn parse(text: &str) -> Result<CursorText, String> {
        let text = text.trim();
        let mut cursor = CursorText::default();
        if text.is_empty() {
            return Ok(cursor);
        }
        if text == "now" {
            cursor.now = true;
            return Ok(cursor);
        }
        for part in text.split(',') {
            if let Some(cluster) = part.trim().strip_prefix("c=") {
                cursor.clusters.push(cluster.to_string());
                continue;
            }
            let (p, seq) = part
                .trim()
                .strip_prefix('p')
                .and_then(|rest| rest.split_once('='))
                .ok_or_else(|| {
                    format!("cursor: \"{part}\" is not of the form p<partition>=<sequence>")
                })?;
            let p: Partition = p
                .parse()
                .map_err(|_| format!("cursor: bad partition \"{p}\""))?;
            let seq: u64 = seq
                .parse()
                .map_err(|_| format!("cursor: bad sequence \"{seq}\""))?;
            cursor.positions.insert(p, seq);
        }
        Ok(cursor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_clusters_positions_and_the_two_words() {
        assert_eq!(CursorText::parse("  ").unwrap(), CursorText::default());
        assert!(CursorText::parse("now").unwrap().now);
        let c = CursorText::parse("c=abc, p0=12,p3=7").unwrap();
        assert_eq!(c.clusters, vec!["abc".to_string()]);
        assert_eq!(c.positions, BTreeMap::from([(0, 12), (3, 7)]));
        assert!(!c.now);
    }

    #[test]
    fn a_bad_part_is_quoted() {
        assert_eq!(
            CursorText::parse("p0=1,x").unwrap_err(),
            "cursor: \"x\" is not of the form p<partition>=<sequence>"
        );
        assert_eq!(
            CursorText::parse("p-1=1").unwrap_err(),
            "cursor: bad partition \"-1\""
        );
        assert_eq!(
            CursorText::parse("p1=99999999999999999999").unwrap_err(),
            "cursor: bad sequence \"99999999999999999999\""
        );
    }
}
