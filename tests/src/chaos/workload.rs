//! The seeded workload of a chaos run and the reference model that says what the engine must
//! end with.
//!
//! Every user sends steps numbered 1, 2, 3...; each step is one mParticle JSON batch with one
//! `Chaos Step` event and the user attributes `phase` (red, green or blue, drawn from the
//! seed) and `seq`. Three audiences read them: a count that only grows, an attribute that comes
//! and goes, and both together (a count that drops users once they pass it). The model folds
//! the steps the events topic holds, in the topic's order, so it is exact whatever the broker
//! or the producer did: what the engine shows must equal it, user by user.
//!
//! Poison messages (each of [`Poison`]'s kinds, drawn by the seed among the steps) must be
//! dead-lettered and change nothing.

use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};

pub const STEP_EVENT: &str = "Chaos Step";
/// The Kafka header that marks a poison message, so that the model can tell it from a step
/// without decoding it (the engine never reads this header).
pub const POISON_HEADER: &str = "chaos-poison";
/// The engine's message limit in chaos runs (`AUDIENCE_MAX_MESSAGE_BYTES`), small so that an
/// oversized message is cheap to send.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024;

const PHASES: [&str; 3] = ["red", "green", "blue"];

/// SplitMix64: a seeded, reproducible stream of numbers (the same seed, the same run).
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// True with probability `per_10000` / 10,000.
    pub fn chance(&mut self, per_10000: u64) -> bool {
        self.below(10_000) < per_10000
    }
}

/// The audiences of a chaos run, by name, and what the model says of each.
pub fn audiences() -> Vec<(&'static str, Value)> {
    let red = json!({"user_attribute": {"name": "phase", "op": "exact_match", "value": "red"}});
    vec![
        (
            "chaos: stepped 5+",
            json!({"event": {"name": STEP_EVENT, "count": {"at_least": 5}}}),
        ),
        ("chaos: red", red.clone()),
        (
            "chaos: red under 8 steps",
            json!({"and": [red, {"event": {"name": STEP_EVENT, "count": {"at_most": 7}}}]}),
        ),
    ]
}

/// Whether a user with `steps` steps and the last phase `phase` is in audience `index` of
/// [`audiences`].
fn is_member(index: usize, steps: u64, phase: &str) -> bool {
    match index {
        0 => steps >= 5,
        1 => phase == "red",
        2 => phase == "red" && steps <= 7,
        _ => unreachable!("three chaos audiences"),
    }
}

/// A message the engine must refuse, one kind of each way a producer can go wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Poison {
    MalformedJson,
    GarbageProtobuf,
    Oversized,
    DeeplyNested,
    HugeArray,
    NotANumber,
    InfiniteNumber,
    YearOne,
    Year9999,
    /// A valid batch of another user than its key: the profile lives on its key's partition,
    /// so trusting the payload would give one user two partitions (refused, see the README).
    KeyMismatch,
}

impl Poison {
    pub const ALL: [Poison; 10] = [
        Poison::MalformedJson,
        Poison::GarbageProtobuf,
        Poison::Oversized,
        Poison::DeeplyNested,
        Poison::HugeArray,
        Poison::NotANumber,
        Poison::InfiniteNumber,
        Poison::YearOne,
        Poison::Year9999,
        Poison::KeyMismatch,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Poison::MalformedJson => "malformed_json",
            Poison::GarbageProtobuf => "garbage_protobuf",
            Poison::Oversized => "oversized",
            Poison::DeeplyNested => "deeply_nested",
            Poison::HugeArray => "huge_array",
            Poison::NotANumber => "nan",
            Poison::InfiniteNumber => "infinite",
            Poison::YearOne => "year_1",
            Poison::Year9999 => "year_9999",
            Poison::KeyMismatch => "key_mismatch",
        }
    }
}

/// One message of the workload: a user's step, or poison keyed by a user.
#[derive(Debug, Clone)]
pub struct Message {
    /// Its place in the workload, from 0: also its event time's offset from the run's base,
    /// so that a delta's `event_time_ms` names the message that caused it.
    pub index: u64,
    pub mpid: i64,
    /// The user's step number (1, 2, ...); 0 for poison.
    pub seq: u64,
    pub phase: &'static str,
    pub poison: Option<Poison>,
}

/// A Kafka record ready to send.
pub struct Record {
    pub key: String,
    pub payload: Vec<u8>,
    pub content_type: Option<&'static str>,
    pub poison: Option<Poison>,
}

impl Message {
    pub fn event_time(&self, base_ms: i64) -> i64 {
        base_ms + self.index as i64
    }

    fn step_batch(&self, mpid: i64, at: i64) -> Value {
        json!({
            "mpid": mpid,
            "environment": "production",
            "timestamp_unixtime_ms": at,
            "events": [{
                "event_type": "custom_event",
                "data": {"event_name": STEP_EVENT, "custom_event_type": "other",
                         "timestamp_unixtime_ms": at, "custom_attributes": {"seq": self.seq}},
            }],
            "user_attributes": {"phase": self.phase, "seq": self.seq},
            "user_identities": {"customer_id": format!("chaos-{mpid}")},
        })
    }

    pub fn record(&self, base_ms: i64, rng: &mut Rng) -> Record {
        let at = self.event_time(base_ms);
        let key = self.mpid.to_string();
        let mut content_type = None;
        let payload = match self.poison {
            None => self.step_batch(self.mpid, at).to_string().into_bytes(),
            Some(Poison::MalformedJson) => {
                let whole = self.step_batch(self.mpid, at).to_string();
                whole.as_bytes()[..whole.len() / 2].to_vec()
            }
            Some(Poison::GarbageProtobuf) => {
                content_type = Some("application/x-protobuf");
                // 0xFF starts a field of wire type 7, which does not exist: never an envelope.
                let mut bytes = vec![0xFF, 0xFF];
                bytes.extend((0..64).map(|_| rng.next_u64() as u8));
                bytes
            }
            Some(Poison::Oversized) => {
                let mut batch = self.step_batch(self.mpid, at);
                batch["padding"] = json!("x".repeat(MAX_MESSAGE_BYTES));
                batch.to_string().into_bytes()
            }
            Some(Poison::DeeplyNested) => {
                let depth = 400;
                let mut text = format!("{{\"mpid\": {}, \"events\": ", self.mpid);
                text.push_str(&"[".repeat(depth));
                text.push_str(&"]".repeat(depth));
                text.push('}');
                text.into_bytes()
            }
            Some(Poison::HugeArray) => {
                let zeros = vec!["0"; 20_000].join(",");
                format!(
                    "{{\"mpid\": {}, \"timestamp_unixtime_ms\": {at}, \"events\": [{zeros}]}}",
                    self.mpid
                )
                .into_bytes()
            }
            Some(Poison::NotANumber) => format!(
                "{{\"mpid\": {}, \"events\": [], \"user_attributes\": {{\"score\": NaN}}}}",
                self.mpid
            )
            .into_bytes(),
            Some(Poison::InfiniteNumber) => format!(
                "{{\"mpid\": {}, \"events\": [], \"user_attributes\": {{\"score\": 1e999}}}}",
                self.mpid
            )
            .into_bytes(),
            Some(Poison::YearOne) => {
                // 0001-01-01T00:00:00Z
                self.step_batch(self.mpid, -62_135_596_800_000)
                    .to_string()
                    .into_bytes()
            }
            Some(Poison::Year9999) => {
                // 9999-12-31T23:59:59Z
                self.step_batch(self.mpid, 253_402_300_799_000)
                    .to_string()
                    .into_bytes()
            }
            Some(Poison::KeyMismatch) => {
                self.step_batch(self.mpid + 1, at).to_string().into_bytes()
            }
        };
        Record {
            key,
            payload,
            content_type,
            poison: self.poison,
        }
    }
}

/// The workload: `users` users, `messages` messages in a seeded order, `poison_per_10000` of
/// them poison (cycling through the kinds, so a run of 1,000 poison messages has each kind).
pub fn workload(seed: u64, users: i64, messages: u64, poison_per_10000: u64) -> Vec<Message> {
    let mut rng = Rng::new(seed);
    let mut seqs: BTreeMap<i64, u64> = BTreeMap::new();
    let mut poisons = 0usize;
    (0..messages)
        .map(|index| {
            let mpid = 1 + rng.below(users as u64) as i64;
            if rng.chance(poison_per_10000) {
                let kind = Poison::ALL[poisons % Poison::ALL.len()];
                poisons += 1;
                return Message {
                    index,
                    mpid,
                    seq: 0,
                    phase: "",
                    poison: Some(kind),
                };
            }
            let seq = seqs.entry(mpid).or_insert(0);
            *seq += 1;
            Message {
                index,
                mpid,
                seq: *seq,
                phase: PHASES[rng.below(3) as usize],
                poison: None,
            }
        })
        .collect()
}

/// What a user is after the steps the topic holds for it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserModel {
    pub steps: u64,
    /// The step numbers seen, to tell a step the topic holds twice (a producer's retry).
    pub seqs: BTreeSet<u64>,
    pub phase: String,
}

/// The reference model: each user folded from the steps in topic order.
#[derive(Debug, Clone, Default)]
pub struct Model {
    pub users: BTreeMap<i64, UserModel>,
    pub poison: BTreeMap<Poison, u64>,
}

impl Model {
    /// Folds one record of the events topic (in its partition's order).
    pub fn apply(&mut self, poison: Option<&str>, payload: &[u8]) {
        if let Some(name) = poison {
            if let Some(kind) = Poison::ALL.iter().find(|k| k.name() == name) {
                *self.poison.entry(*kind).or_default() += 1;
            }
            return;
        }
        let batch: Value = serde_json::from_slice(payload).expect("a step is valid JSON");
        let mpid = batch["mpid"].as_i64().expect("a step has an mpid");
        let user = self.users.entry(mpid).or_default();
        user.steps += 1;
        user.seqs
            .insert(batch["user_attributes"]["seq"].as_u64().unwrap_or(0));
        user.phase = batch["user_attributes"]["phase"]
            .as_str()
            .unwrap_or_default()
            .to_string();
    }

    pub fn poison_total(&self) -> u64 {
        self.poison.values().sum()
    }

    /// The members the model gives each audience (by its place in [`audiences`]).
    pub fn members(&self) -> Vec<BTreeSet<i64>> {
        (0..audiences().len())
            .map(|a| {
                self.users
                    .iter()
                    .filter(|(_, u)| is_member(a, u.steps, &u.phase))
                    .map(|(m, _)| *m)
                    .collect()
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_gives_the_same_workload_and_users_count_up() {
        let a = workload(7, 50, 2_000, 100);
        let b = workload(7, 50, 2_000, 100);
        assert_eq!(
            a.iter().map(|m| (m.mpid, m.seq)).collect::<Vec<_>>(),
            b.iter().map(|m| (m.mpid, m.seq)).collect::<Vec<_>>()
        );
        let mut last: BTreeMap<i64, u64> = BTreeMap::new();
        for m in a.iter().filter(|m| m.poison.is_none()) {
            let before = last.insert(m.mpid, m.seq).unwrap_or(0);
            assert_eq!(m.seq, before + 1, "user {} counts up by one", m.mpid);
        }
        let poison = a.iter().filter(|m| m.poison.is_some()).count();
        assert!((5..=40).contains(&poison), "about 1%: {poison}");
    }

    #[test]
    fn the_model_folds_steps_in_order_and_ignores_poison() {
        let mut rng = Rng::new(1);
        let mut model = Model::default();
        let phases = ["green", "red", "red", "blue", "red", "red", "red", "red"];
        for (i, phase) in phases.iter().enumerate() {
            let m = Message {
                index: i as u64,
                mpid: 3,
                seq: i as u64 + 1,
                phase,
                poison: None,
            };
            model.apply(None, &m.record(0, &mut rng).payload);
            let members = model.members();
            let steps = i as u64 + 1;
            assert_eq!(members[0].contains(&3), steps >= 5);
            assert_eq!(members[1].contains(&3), *phase == "red");
            assert_eq!(members[2].contains(&3), *phase == "red" && steps <= 7);
        }
        model.apply(Some("nan"), b"{\"mpid\": 3, NaN}");
        assert_eq!(model.users[&3].steps, 8);
        assert_eq!(model.poison_total(), 1);
    }
}
