//! A minimal MaxMind DB writer (binary format 2.0) for tests: it produces small
//! `GeoIP2-City`-shaped databases so geolocation can be tested without MaxMind's
//! licensed files.
//!
//! Layout, per <https://maxmind.github.io/MaxMind-DB/>:
//!
//! ```text
//! [binary search tree: node_count nodes × 2 records]
//! [16 zero bytes: data section separator]
//! [data section: one encoded map per distinct record]
//! [\xAB\xCD\xEFMaxMind.com][metadata map]
//! ```
//!
//! The tree is an IPv6 tree (`ip_version` 6) with 28-bit records. As in MaxMind's own
//! databases, IPv4 networks live under `::/96` (`a.b.c.d/n` is stored as
//! `::a.b.c.d/(96+n)`). `::ffff:0:0/96` (IPv4-mapped) and `2002::/16` (6to4) are
//! aliases that point at the same IPv4 subtree.
//!
//! A tree record holds one of three kinds of value:
//! * `< node_count`: the index of the next node;
//! * `== node_count`: no data, meaning the address is not in the database;
//! * `> node_count`: data at offset `record - node_count - 16` in the data section.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::time::{SystemTime, UNIX_EPOCH};

/// The byte sequence that precedes the metadata map, at the end of the file.
pub const METADATA_MARKER: &[u8] = b"\xAB\xCD\xEFMaxMind.com";

/// Record size in bits of the trees written here (the one GeoIP2-City uses).
pub const RECORD_SIZE: u16 = 28;

/// Number of zero bytes between the search tree and the data section.
const DATA_SECTION_SEPARATOR: usize = 16;

/// Bytes per tree node: two records of [`RECORD_SIZE`] bits each.
pub const NODE_BYTES: usize = RECORD_SIZE as usize * 2 / 8;

/// The largest value a 28-bit record can hold.
const MAX_RECORD: u32 = (1 << RECORD_SIZE) - 1;

/// Depth in the IPv6 tree at which the IPv4 space (`::/96`) starts.
const IPV4_DEPTH: u8 = 96;

/// Data for one network. Absent fields are left out of the database, and so are parts
/// (`city`, `subdivisions`, `postal`, `country`, `location`) in which every field is
/// absent.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CityRecord {
    /// English city name: `city.names.en`.
    pub city: Option<String>,
    /// ISO 3166-2 subdivision code without the country prefix, e.g. `"ENG"` or `"WA"`:
    /// `subdivisions[0].iso_code`.
    pub subdivision_iso: Option<String>,
    /// English subdivision name: `subdivisions[0].names.en`.
    pub subdivision_name: Option<String>,
    /// Postal code: `postal.code`.
    pub postal_code: Option<String>,
    /// ISO 3166-1 alpha-2 country code: `country.iso_code`.
    pub country_iso: Option<String>,
    /// Latitude, encoded as a double: `location.latitude`.
    pub latitude: Option<f64>,
    /// Longitude, encoded as a double: `location.longitude`.
    pub longitude: Option<f64>,
    /// US DMA / metro code, encoded as a uint16: `location.metro_code`.
    pub metro_code: Option<u16>,
}

/// Writes a `GeoIP2-City`-shaped MaxMind DB that contains the given IPv4 networks and
/// returns the file's bytes.
///
/// Each entry is `(network address, prefix length, data)`. Host bits past the prefix are
/// ignored. Networks may be nested: a more specific network overrides a less specific
/// one for its own addresses, whatever the order of the entries. If the same network is
/// listed twice, the later entry wins. Records with identical data share a single copy
/// in the data section.
///
/// The tree is IPv6 with 28-bit records and the IPv4 space at `::/96`, aliased from
/// `::ffff:0:0/96` and `2002::/16`. The metadata has `database_type` `"GeoIP2-City"`,
/// `languages` `["en"]` and `build_epoch` set to the current time.
///
/// # Panics
///
/// Panics if a prefix length is greater than 32, or if the database is too large for
/// 28-bit records, which test-sized inputs never are.
pub fn write_city_database(networks: &[(Ipv4Addr, u8, CityRecord)]) -> Vec<u8> {
    // The data section. Identical records are stored once.
    let mut data = Vec::new();
    let mut offsets: HashMap<Vec<u8>, u32> = HashMap::new();
    let mut entries: Vec<(u8, u128, u32)> = Vec::with_capacity(networks.len() + 1);
    for (address, prefix_len, record) in networks {
        assert!(*prefix_len <= 32, "IPv4 prefix length {prefix_len} > 32");
        let mut encoded = Vec::new();
        encode(&city_value(record), &mut encoded);
        let offset = *offsets.entry(encoded).or_insert_with_key(|bytes| {
            let offset = u32::try_from(data.len()).expect("data section below 4 GiB");
            data.extend_from_slice(bytes);
            offset
        });
        let bits = u32::from(*address);
        if *prefix_len == 0 {
            // Stored as its two halves so that the IPv4 root stays a node the aliases
            // can point to.
            entries.push((1, u128::from(bits & 0x7FFF_FFFF), offset));
            entries.push((1, u128::from(bits | 0x8000_0000), offset));
        } else {
            let mask = u32::MAX << (32 - prefix_len);
            entries.push((*prefix_len, u128::from(bits & mask), offset));
        }
    }
    // Less specific first, so that more specific networks split and override them. The
    // sort is stable, so for a repeated network the later entry wins.
    entries.sort_by_key(|&(prefix_len, _, _)| prefix_len);

    let mut tree = Tree::new();
    let ipv4_root = tree.ipv4_root();
    for &(prefix_len, key, offset) in &entries {
        tree.set(key, IPV4_DEPTH + prefix_len, Record::Data(offset));
    }
    tree.set(0xFFFF_u128 << 32, 96, Record::Node(ipv4_root)); // ::ffff:0:0/96
    tree.set(0x2002_u128 << 112, 16, Record::Node(ipv4_root)); // 2002::/16

    let node_count = u32::try_from(tree.nodes.len()).expect("node count below 2^32");
    let mut out = tree.serialize(node_count);
    out.extend_from_slice(&[0; DATA_SECTION_SEPARATOR]);
    out.extend_from_slice(&data);
    out.extend_from_slice(METADATA_MARKER);
    encode(&metadata(node_count), &mut out);
    out
}

/// The `GeoIP2-City` layout of one record.
fn city_value(record: &CityRecord) -> Value {
    let names = |name: &String| Value::map([("en", Value::Str(name.clone()))]);
    let mut top = Vec::new();
    if let Some(city) = &record.city {
        top.push(("city", Value::map([("names", names(city))])));
    }
    let mut subdivision = Vec::new();
    if let Some(iso) = &record.subdivision_iso {
        subdivision.push(("iso_code", Value::Str(iso.clone())));
    }
    if let Some(name) = &record.subdivision_name {
        subdivision.push(("names", names(name)));
    }
    if !subdivision.is_empty() {
        top.push(("subdivisions", Value::Array(vec![Value::map(subdivision)])));
    }
    if let Some(code) = &record.postal_code {
        top.push(("postal", Value::map([("code", Value::Str(code.clone()))])));
    }
    if let Some(iso) = &record.country_iso {
        top.push((
            "country",
            Value::map([("iso_code", Value::Str(iso.clone()))]),
        ));
    }
    let mut location = Vec::new();
    if let Some(latitude) = record.latitude {
        location.push(("latitude", Value::Double(latitude)));
    }
    if let Some(longitude) = record.longitude {
        location.push(("longitude", Value::Double(longitude)));
    }
    if let Some(metro_code) = record.metro_code {
        location.push(("metro_code", Value::U16(metro_code)));
    }
    if !location.is_empty() {
        top.push(("location", Value::map(location)));
    }
    Value::map(top)
}

/// The metadata map that follows [`METADATA_MARKER`].
fn metadata(node_count: u32) -> Value {
    let build_epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs());
    Value::map([
        ("binary_format_major_version", Value::U16(2)),
        ("binary_format_minor_version", Value::U16(0)),
        ("build_epoch", Value::U64(build_epoch)),
        ("database_type", Value::Str("GeoIP2-City".to_owned())),
        (
            "description",
            Value::map([(
                "en",
                Value::Str("audience-e2e test database (GeoIP2-City layout)".to_owned()),
            )]),
        ),
        ("ip_version", Value::U16(6)),
        ("languages", Value::Array(vec![Value::Str("en".to_owned())])),
        ("node_count", Value::U32(node_count)),
        ("record_size", Value::U16(RECORD_SIZE)),
    ])
}

/// The subset of the data section's types this writer needs.
#[derive(Debug, Clone, PartialEq)]
enum Value {
    /// Type 2: UTF-8 string.
    Str(String),
    /// Type 3: IEEE 754 double, always 8 bytes.
    Double(f64),
    /// Type 5: unsigned 16-bit integer.
    U16(u16),
    /// Type 6: unsigned 32-bit integer.
    U32(u32),
    /// Type 7: map with string keys.
    Map(Vec<(String, Value)>),
    /// Type 9 (extended): unsigned 64-bit integer.
    U64(u64),
    /// Type 11 (extended): array.
    Array(Vec<Value>),
}

impl Value {
    fn map<'a>(pairs: impl IntoIterator<Item = (&'a str, Value)>) -> Self {
        Value::Map(
            pairs
                .into_iter()
                .map(|(key, value)| (key.to_owned(), value))
                .collect(),
        )
    }
}

const TYPE_STRING: u8 = 2;
const TYPE_DOUBLE: u8 = 3;
const TYPE_UINT16: u8 = 5;
const TYPE_UINT32: u8 = 6;
const TYPE_MAP: u8 = 7;
const TYPE_UINT64: u8 = 9;
const TYPE_ARRAY: u8 = 11;

/// Appends the data-section encoding of `value` to `out`.
fn encode(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::Str(text) => {
            write_control(out, TYPE_STRING, text.len());
            out.extend_from_slice(text.as_bytes());
        }
        Value::Double(number) => {
            write_control(out, TYPE_DOUBLE, 8);
            out.extend_from_slice(&number.to_be_bytes());
        }
        Value::U16(number) => write_uint(out, TYPE_UINT16, &number.to_be_bytes()),
        Value::U32(number) => write_uint(out, TYPE_UINT32, &number.to_be_bytes()),
        Value::U64(number) => write_uint(out, TYPE_UINT64, &number.to_be_bytes()),
        Value::Map(pairs) => {
            write_control(out, TYPE_MAP, pairs.len());
            for (key, value) in pairs {
                encode(&Value::Str(key.clone()), out);
                encode(value, out);
            }
        }
        Value::Array(items) => {
            write_control(out, TYPE_ARRAY, items.len());
            for item in items {
                encode(item, out);
            }
        }
    }
}

/// Unsigned integers are stored big-endian in as few bytes as they need. Zero takes
/// no bytes at all.
fn write_uint(out: &mut Vec<u8>, type_num: u8, big_endian: &[u8]) {
    let significant = &big_endian[big_endian.iter().take_while(|&&byte| byte == 0).count()..];
    write_control(out, type_num, significant.len());
    out.extend_from_slice(significant);
}

/// Writes a control byte: the type in the top 3 bits and the size in the low 5. Types
/// above 7 store 0 in the type bits and `type - 7` in the next byte. Sizes from 29 up
/// continue in 1, 2 or 3 more bytes, which come after the extended-type byte.
fn write_control(out: &mut Vec<u8>, type_num: u8, size: usize) {
    let (size_bits, extra): (u8, Vec<u8>) = if size < 29 {
        (u8::try_from(size).expect("size < 29"), Vec::new())
    } else if size < 29 + 256 {
        (29, vec![u8::try_from(size - 29).expect("size < 285")])
    } else if size < 285 + 65_536 {
        let rest = u16::try_from(size - 285).expect("size < 65821");
        (30, rest.to_be_bytes().to_vec())
    } else {
        let rest = u32::try_from(size - 65_821).expect("size fits in 3 bytes");
        assert!(
            rest < 1 << 24,
            "data field of {size} bytes is too large for MaxMind DB"
        );
        (31, rest.to_be_bytes()[1..].to_vec())
    };
    if type_num <= 7 {
        out.push((type_num << 5) | size_bits);
    } else {
        out.push(size_bits);
        out.push(type_num - 7);
    }
    out.extend_from_slice(&extra);
}

/// One record of a tree node while the tree is built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Record {
    /// No data: serialized as `node_count`.
    Empty,
    /// Another node, by index.
    Node(u32),
    /// Data at this offset in the data section.
    Data(u32),
}

/// A binary trie over 128-bit addresses, most significant bit first. Node 0 is the root.
struct Tree {
    nodes: Vec<[Record; 2]>,
}

impl Tree {
    fn new() -> Self {
        Tree {
            nodes: vec![[Record::Empty; 2]],
        }
    }

    /// Makes sure the node at the end of the `::/96` path exists and returns its index.
    fn ipv4_root(&mut self) -> u32 {
        let (parent, bit) = self.descend(0, IPV4_DEPTH);
        match self.nodes[parent][bit] {
            Record::Node(index) => index,
            inherited => {
                let index = self.push([inherited; 2]);
                self.nodes[parent][bit] = Record::Node(index);
                index
            }
        }
    }

    /// Sets the record that covers the network `key/prefix_len`, creating the nodes on
    /// its path.
    fn set(&mut self, key: u128, prefix_len: u8, record: Record) {
        let (node, bit) = self.descend(key, prefix_len);
        self.nodes[node][bit] = record;
    }

    /// Walks the first `prefix_len` bits of `key` from the root. It creates nodes on the
    /// way, and a new node takes over the data of the record it replaces in both of its
    /// records. Returns the node and side (0 or 1) of the last bit's record.
    fn descend(&mut self, key: u128, prefix_len: u8) -> (usize, usize) {
        assert!(
            (1..=128).contains(&prefix_len),
            "prefix length {prefix_len} outside 1..=128"
        );
        let bit_at = |depth: u8| usize::from((key >> (127 - depth)) & 1 == 1);
        let mut node = 0;
        for depth in 0..prefix_len - 1 {
            let bit = bit_at(depth);
            node = match self.nodes[node][bit] {
                Record::Node(index) => index as usize,
                inherited => {
                    let index = self.push([inherited; 2]);
                    self.nodes[node][bit] = Record::Node(index);
                    index as usize
                }
            };
        }
        (node, bit_at(prefix_len - 1))
    }

    fn push(&mut self, records: [Record; 2]) -> u32 {
        self.nodes.push(records);
        u32::try_from(self.nodes.len() - 1).expect("node index below 2^32")
    }

    /// The search tree section: `node_count` nodes of 7 bytes each. Of the middle byte,
    /// the high nibble holds the top 4 bits of the left record and the low nibble those
    /// of the right record.
    fn serialize(&self, node_count: u32) -> Vec<u8> {
        let value = |record: Record| {
            let value = match record {
                Record::Empty => node_count,
                Record::Node(index) => index,
                Record::Data(offset) => node_count
                    .checked_add(16)
                    .and_then(|base| base.checked_add(offset))
                    .expect("record value below 2^32"),
            };
            assert!(
                value <= MAX_RECORD,
                "record value {value} does not fit in {RECORD_SIZE} bits"
            );
            value
        };
        let mut out = Vec::with_capacity(self.nodes.len() * NODE_BYTES);
        for &[left, right] in &self.nodes {
            let (left, right) = (value(left).to_be_bytes(), value(right).to_be_bytes());
            out.extend_from_slice(&left[1..]);
            out.push((left[0] << 4) | right[0]);
            out.extend_from_slice(&right[1..]);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Nodes on the `::/96` path down to the IPv4 root, plus the nodes of the
    /// `::ffff:0:0/96` alias (15, branching off at depth 80) and of the `2002::/16`
    /// alias (13, branching off at depth 2).
    const EMPTY_TREE_NODES: usize = 97 + 15 + 13;

    fn london() -> CityRecord {
        CityRecord {
            city: Some("London".into()),
            subdivision_iso: Some("ENG".into()),
            subdivision_name: Some("England".into()),
            postal_code: Some("E1".into()),
            country_iso: Some("GB".into()),
            latitude: Some(51.5),
            longitude: Some(-0.09),
            metro_code: None,
        }
    }

    fn wide_record() -> CityRecord {
        CityRecord {
            country_iso: Some("GB".into()),
            ..CityRecord::default()
        }
    }

    fn encoded_len(record: &CityRecord) -> usize {
        let mut out = Vec::new();
        encode(&city_value(record), &mut out);
        out.len()
    }

    fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
        haystack
            .windows(needle.len())
            .rposition(|window| window == needle)
    }

    /// Reads the record of `node` on side `bit` (28-bit records).
    fn record(db: &[u8], node: usize, bit: usize) -> u32 {
        let bytes = &db[node * NODE_BYTES..(node + 1) * NODE_BYTES];
        if bit == 0 {
            u32::from_be_bytes([bytes[3] >> 4, bytes[0], bytes[1], bytes[2]])
        } else {
            u32::from_be_bytes([bytes[3] & 0x0F, bytes[4], bytes[5], bytes[6]])
        }
    }

    /// Follows 96 zero bits and then the address's bits until a non-node record.
    fn lookup(db: &[u8], node_count: u32, address: Ipv4Addr) -> u32 {
        let key = u128::from(u32::from(address));
        let mut node = 0_u32;
        for depth in 0..128 {
            let bit = usize::from((key >> (127 - depth)) & 1 == 1);
            node = record(db, node as usize, bit);
            if node >= node_count {
                break;
            }
        }
        node
    }

    #[test]
    fn empty_database_has_the_alias_skeleton_and_metadata() {
        let db = write_city_database(&[]);
        let tree_size = EMPTY_TREE_NODES * NODE_BYTES;
        assert!(db[tree_size..tree_size + DATA_SECTION_SEPARATOR]
            .iter()
            .all(|&b| b == 0));
        // The data section is empty, so the metadata marker follows the separator.
        let marker = tree_size + DATA_SECTION_SEPARATOR;
        assert_eq!(&db[marker..marker + METADATA_MARKER.len()], METADATA_MARKER);
        assert_eq!(find(&db, METADATA_MARKER), Some(marker));
        let node_count = u32::try_from(EMPTY_TREE_NODES).unwrap();
        assert_eq!(
            lookup(&db, node_count, Ipv4Addr::new(1, 2, 3, 4)),
            node_count
        );
    }

    #[test]
    fn one_network_tree_size_and_lookup() {
        let db = write_city_database(&[(Ipv4Addr::new(81, 2, 69, 0), 24, london())]);
        // The /24 adds the nodes at depths 97..=119 below the IPv4 root.
        let nodes = EMPTY_TREE_NODES + 23;
        let node_count = u32::try_from(nodes).unwrap();
        let tree_size = nodes * NODE_BYTES;
        assert!(db[tree_size..tree_size + DATA_SECTION_SEPARATOR]
            .iter()
            .all(|&b| b == 0));
        let data_start = tree_size + DATA_SECTION_SEPARATOR;
        // The single record sits at data offset 0: a 5-entry map.
        assert_eq!(db[data_start], 0xE5);
        assert_eq!(
            lookup(&db, node_count, Ipv4Addr::new(81, 2, 69, 5)),
            node_count + 16
        );
        assert_eq!(
            lookup(&db, node_count, Ipv4Addr::new(81, 2, 70, 5)),
            node_count
        );
        let marker = find(&db, METADATA_MARKER).expect("metadata marker");
        assert!(marker > data_start);
        // Metadata map: 9 entries.
        assert_eq!(db[marker + METADATA_MARKER.len()], 0xE9);
    }

    #[test]
    fn identical_records_share_data_and_nested_networks_override() {
        let db = write_city_database(&[
            (Ipv4Addr::new(81, 2, 69, 0), 24, london()),
            (Ipv4Addr::new(81, 0, 0, 0), 8, wide_record()),
            (Ipv4Addr::new(82, 0, 0, 0), 8, wide_record()),
        ]);
        // Two distinct records in the data section: the tree ends where they and the
        // separator begin.
        let data_len = encoded_len(&london()) + encoded_len(&wide_record());
        let marker = find(&db, METADATA_MARKER).expect("metadata marker");
        let nodes = (marker - DATA_SECTION_SEPARATOR - data_len) / NODE_BYTES;
        assert_eq!((marker - DATA_SECTION_SEPARATOR - data_len) % NODE_BYTES, 0);
        let node_count = u32::try_from(nodes).unwrap();
        let in_81 = lookup(&db, node_count, Ipv4Addr::new(81, 9, 9, 9));
        let in_82 = lookup(&db, node_count, Ipv4Addr::new(82, 9, 9, 9));
        let in_london = lookup(&db, node_count, Ipv4Addr::new(81, 2, 69, 200));
        assert!(in_81 > node_count);
        assert_eq!(in_81, in_82);
        assert_ne!(in_london, in_81);
        assert_eq!(
            lookup(&db, node_count, Ipv4Addr::new(83, 0, 0, 1)),
            node_count
        );
    }

    #[test]
    fn control_bytes_follow_the_spec() {
        let encoded = |value: Value| {
            let mut out = Vec::new();
            encode(&value, &mut out);
            out
        };
        assert_eq!(encoded(Value::Str("en".into())), b"\x42en");
        assert_eq!(encoded(Value::U16(819)), [0xA2, 0x03, 0x33]);
        assert_eq!(encoded(Value::U16(0)), [0xA0]);
        assert_eq!(encoded(Value::U32(28)), [0xC1, 28]);
        assert_eq!(encoded(Value::U64(1)), [0x01, 0x02, 0x01]);
        assert_eq!(encoded(Value::Array(vec![])), [0x00, 0x04]);
        assert_eq!(encoded(Value::Double(1.0))[..2], [0x68, 0x3F]);
        let long = |len: usize| encoded(Value::Str("x".repeat(len)));
        assert_eq!(long(28)[0], 0x5C);
        assert_eq!(long(29)[..2], [0x5D, 0]);
        assert_eq!(long(285)[..3], [0x5E, 0, 0]);
        assert_eq!(long(65_821)[..4], [0x5F, 0, 0, 0]);
    }
}
