//! Audience A/B tests: an audience's members split into up to [`MAX_VARIATIONS`] variations
//! plus a Control group holding the rest, each connected to outputs on its own.
//!
//! Invariants:
//! - a member's variation is a pure function of (audience id, test id, MPID): editing the
//!   audience's definition moves nobody, and every node, reader and restart agrees without
//!   storing an assignment per member;
//! - the split is balanced as defined: a member falls in one of [`BUCKETS`] buckets by a
//!   uniform hash, and each variation owns `percent` hundredths of them, in the order the
//!   variations were defined, Control last;
//! - the percentages of the created variations never pass 100; Control holds 100 minus their
//!   sum (0 when they reach 100);
//! - names are unique (ignoring case) and "Control" is Control's alone.
//!
//! Pure: the test is part of the audience's catalog record; outputs filter by it.

use crate::criteria::DefinitionError;
use crate::model::{AudienceId, Mpid, TimestampMs};
use serde::{Deserialize, Serialize};

/// The most variations a test creates, Control not counted.
pub const MAX_VARIATIONS: usize = 5;
/// The variation holding the members no created variation takes.
pub const CONTROL: &str = "Control";
/// The longest variation name, in characters.
pub const MAX_VARIATION_NAME_CHARS: usize = 64;
/// Hash buckets a member falls in: a hundredth of a percent each.
pub const BUCKETS: u64 = 10_000;

/// A variation as created: its share of the audience in whole percent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Variation {
    pub name: String,
    pub percent: u32,
}

/// An audience's test: the variations created, in order; Control is implied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AbTest {
    /// Chosen when the test is created (at random by the proposing node): part of the hash,
    /// so a test deleted and created again splits the audience afresh.
    pub id: u64,
    pub variations: Vec<Variation>,
    #[serde(default)]
    pub created_at_ms: TimestampMs,
}

impl AbTest {
    /// A test of the variations a caller gave (an empty name becomes "Variation N", N its
    /// position from 1), checked.
    pub fn new(id: u64, variations: Vec<Variation>) -> Result<AbTest, DefinitionError> {
        let variations = variations
            .into_iter()
            .enumerate()
            .map(|(i, v)| Variation {
                name: match v.name.trim() {
                    "" => format!("Variation {}", i + 1),
                    name => name.to_string(),
                },
                percent: v.percent,
            })
            .collect();
        let test = AbTest {
            id,
            variations,
            created_at_ms: 0,
        };
        test.validate()?;
        Ok(test)
    }

    /// Checks the rules of the module's invariants; the error names the variation at fault.
    pub fn validate(&self) -> Result<(), DefinitionError> {
        if self.variations.is_empty() {
            return Err(DefinitionError::new(
                "variations",
                "a test has at least one variation besides Control",
            ));
        }
        if self.variations.len() > MAX_VARIATIONS {
            return Err(DefinitionError::new(
                "variations",
                format!(
                    "{} variations: a test has at most {MAX_VARIATIONS} besides Control",
                    self.variations.len()
                ),
            ));
        }
        let mut total = 0u32;
        for (i, v) in self.variations.iter().enumerate() {
            let field = |f: &str| format!("variations[{i}].{f}");
            if v.name.trim().is_empty() {
                return Err(DefinitionError::new(field("name"), "must not be empty"));
            }
            if v.name.chars().count() > MAX_VARIATION_NAME_CHARS {
                return Err(DefinitionError::new(
                    field("name"),
                    format!("longer than {MAX_VARIATION_NAME_CHARS} characters"),
                ));
            }
            if v.name.trim().eq_ignore_ascii_case(CONTROL) {
                return Err(DefinitionError::new(
                    field("name"),
                    "\"Control\" is the variation holding the rest: choose another name",
                ));
            }
            if let Some(j) = self.variations[..i]
                .iter()
                .position(|w| w.name.trim().to_lowercase() == v.name.trim().to_lowercase())
            {
                return Err(DefinitionError::new(
                    field("name"),
                    format!("\"{}\" is the name of variations[{j}] too", v.name),
                ));
            }
            if v.percent == 0 || v.percent > 100 {
                return Err(DefinitionError::new(
                    field("percent"),
                    format!("{}%: a variation holds 1 to 100 percent", v.percent),
                ));
            }
            total += v.percent;
            if total > 100 {
                return Err(DefinitionError::new(
                    field("percent"),
                    format!(
                        "the variations would hold {total}% of the audience: together they hold \
                         at most 100% (Control holds the rest)"
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Control's share: 100 minus the variations'.
    pub fn control_percent(&self) -> u32 {
        100u32.saturating_sub(self.variations.iter().map(|v| v.percent).sum())
    }

    /// Every variation, Control last, with its share.
    pub fn split(&self) -> impl Iterator<Item = (&str, u32)> {
        self.variations
            .iter()
            .map(|v| (v.name.as_str(), v.percent))
            .chain(std::iter::once((CONTROL, self.control_percent())))
    }

    /// The variation's name as the test spells it, for a name given in any case; `None` when
    /// the test has no such variation.
    pub fn find(&self, name: &str) -> Option<&str> {
        let wanted = name.trim();
        self.split()
            .map(|(name, _)| name)
            .find(|name| name.eq_ignore_ascii_case(wanted))
    }

    /// The variation of a member of `audience`.
    pub fn variation_of(&self, audience: AudienceId, mpid: Mpid) -> &str {
        let bucket = bucket(audience, self.id, mpid);
        let mut upper = 0u64;
        for v in &self.variations {
            upper += u64::from(v.percent) * (BUCKETS / 100);
            if bucket < upper {
                return &v.name;
            }
        }
        CONTROL
    }
}

/// A member's bucket in `0..BUCKETS`: SplitMix64's finaliser over the audience, the test and
/// the MPID in turn (uniform, and each input moves every output bit).
pub fn bucket(audience: AudienceId, test: u64, mpid: Mpid) -> u64 {
    let mut h = mix(audience ^ 0x9e37_79b9_7f4a_7c15);
    h = mix(h ^ test);
    h = mix(h ^ mpid as u64);
    h % BUCKETS
}

fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// How a variation is named downstream: "[Audience External Name] - [Variant Name]" (the
/// audience's name when it has no external name); the audience's name alone for a connection
/// of the whole audience.
pub fn downstream_name(audience_name: &str, variation: &str) -> String {
    match variation {
        "" => audience_name.to_string(),
        variation => format!("{audience_name} - {variation}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(name: &str, percent: u32) -> Variation {
        Variation {
            name: name.into(),
            percent,
        }
    }

    #[test]
    fn control_holds_the_rest_and_names_default_by_position() {
        let test = AbTest::new(7, vec![v("Platform A", 40), v("", 40)]).unwrap();
        let split: Vec<_> = test.split().collect();
        assert_eq!(
            split,
            vec![("Platform A", 40), ("Variation 2", 40), ("Control", 20)]
        );
        assert_eq!(test.find("control"), Some("Control"));
        assert_eq!(test.find(" platform a "), Some("Platform A"));
        assert_eq!(test.find("Platform B"), None);
        let full = AbTest::new(7, vec![v("all", 100)]).unwrap();
        assert_eq!(full.control_percent(), 0);
    }

    #[test]
    fn percentages_past_100_and_bad_names_are_refused_naming_the_variation() {
        let e = AbTest::new(1, vec![v("a", 60), v("b", 30), v("c", 20)]).unwrap_err();
        assert_eq!(e.field, "variations[2].percent");
        assert!(e.reason.contains("110%"), "{e:?}");
        let e = AbTest::new(1, vec![v("a", 0)]).unwrap_err();
        assert_eq!(e.field, "variations[0].percent");
        let e = AbTest::new(1, vec![v("a", 10), v("A", 10)]).unwrap_err();
        assert_eq!(e.field, "variations[1].name");
        assert!(e.reason.contains("variations[0]"), "{e:?}");
        let e = AbTest::new(1, vec![v("CONTROL", 10)]).unwrap_err();
        assert_eq!(e.field, "variations[0].name");
        let six = (0..6).map(|i| v(&format!("v{i}"), 10)).collect();
        let e = AbTest::new(1, six).unwrap_err();
        assert_eq!(e.field, "variations");
        assert!(e.reason.contains("at most 5"), "{e:?}");
        assert_eq!(AbTest::new(1, vec![]).unwrap_err().field, "variations");
        let long = "x".repeat(MAX_VARIATION_NAME_CHARS + 1);
        let e = AbTest::new(1, vec![v(&long, 10)]).unwrap_err();
        assert_eq!(e.field, "variations[0].name");
    }

    #[test]
    fn the_split_of_100_000_members_is_within_a_point_of_each_percentage() {
        let test = AbTest::new(
            0x5eed,
            vec![v("A", 40), v("B", 25), v("C", 15), v("D", 9), v("E", 1)],
        )
        .unwrap();
        let members = 100_000;
        let mut counts = std::collections::BTreeMap::<&str, u64>::new();
        // Consecutive MPIDs (as many producers allocate them) and scattered ones.
        for i in 0..members {
            let mpid = if i % 2 == 0 {
                i
            } else {
                (i as u64).wrapping_mul(0x2545_f491_4f6c_dd1d) as i64
            };
            *counts.entry(test.variation_of(42, mpid)).or_default() += 1;
        }
        for (name, percent) in test.split() {
            let share = counts.get(name).copied().unwrap_or(0) as f64 * 100.0 / members as f64;
            assert!(
                (share - f64::from(percent)).abs() < 1.0,
                "{name}: {share:.2}% of the members for {percent}%"
            );
        }
    }

    #[test]
    fn the_variation_depends_on_audience_test_and_mpid_only() {
        let test = AbTest::new(9, vec![v("A", 50)]).unwrap();
        let renamed = AbTest::new(9, vec![v("Other name", 50)]).unwrap();
        let other_test = AbTest::new(10, vec![v("A", 50)]).unwrap();
        let mut moved_by_new_test = 0;
        for mpid in 0..1_000 {
            let in_a = test.variation_of(3, mpid) == "A";
            assert_eq!(in_a, renamed.variation_of(3, mpid) == "Other name");
            // Stable: the same answer every time.
            assert_eq!(test.variation_of(3, mpid), test.variation_of(3, mpid));
            if in_a != (other_test.variation_of(3, mpid) == "A") {
                moved_by_new_test += 1;
            }
        }
        // A new test splits afresh: about half move.
        assert!(
            (300..700).contains(&moved_by_new_test),
            "{moved_by_new_test}"
        );
    }

    #[test]
    fn variations_are_named_downstream_after_the_audience() {
        assert_eq!(downstream_name("Lapsed", "Email"), "Lapsed - Email");
        assert_eq!(downstream_name("Lapsed", ""), "Lapsed");
    }
}
