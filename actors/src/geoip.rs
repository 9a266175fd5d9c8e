//! GeoIP: where a batch's client IP places the user, from a database in the MaxMind DB format
//! (GeoIP2 or GeoLite2 City, or any database with the same layout), when one is configured.

use audience_state::model::GeoLocation;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::Path;

/// A City database, loaded in memory once and shared by every partition actor.
pub struct GeoIp {
    reader: maxminddb::Reader<Vec<u8>>,
}

impl std::fmt::Debug for GeoIp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GeoIp")
            .field("database_type", &self.reader.metadata.database_type)
            .field("node_count", &self.reader.metadata.node_count)
            .finish()
    }
}

// The subset of the GeoIP2 City record location criteria read.
#[derive(Deserialize)]
struct CityRecord {
    city: Option<Named>,
    subdivisions: Option<Vec<Subdivision>>,
    postal: Option<Postal>,
    country: Option<Country>,
    location: Option<Location>,
}

#[derive(Deserialize)]
struct Named {
    names: Option<BTreeMap<String, String>>,
}

#[derive(Deserialize)]
struct Subdivision {
    iso_code: Option<String>,
    names: Option<BTreeMap<String, String>>,
}

#[derive(Deserialize)]
struct Postal {
    code: Option<String>,
}

#[derive(Deserialize)]
struct Country {
    iso_code: Option<String>,
}

#[derive(Deserialize)]
struct Location {
    latitude: Option<f64>,
    longitude: Option<f64>,
    metro_code: Option<u16>,
    accuracy_radius: Option<u16>,
}

/// GeoIP coordinates less precise than this (a country's centroid, say) are not used for
/// distances.
const MAX_ACCURACY_RADIUS_KM: u16 = 100;

fn english(names: &Option<BTreeMap<String, String>>) -> Option<String> {
    names.as_ref()?.get("en").cloned()
}

impl GeoIp {
    pub fn open(path: &Path) -> Result<GeoIp, String> {
        let reader = maxminddb::Reader::open_readfile(path)
            .map_err(|e| format!("GeoIP database {}: {e}", path.display()))?;
        Ok(GeoIp { reader })
    }

    /// Where `ip` is, or `None` for an address that does not parse or is not in the database.
    pub fn locate(&self, ip: &str) -> Option<GeoLocation> {
        let address: IpAddr = ip.trim().parse().ok()?;
        let record: CityRecord = self.reader.lookup(address).ok()?;
        let subdivision = record.subdivisions.as_ref().and_then(|s| s.first());
        let precise = record.city.is_some()
            && record
                .location
                .as_ref()
                .and_then(|l| l.accuracy_radius)
                .is_none_or(|r| r <= MAX_ACCURACY_RADIUS_KM);
        let coordinate = |f: fn(&Location) -> Option<f64>| {
            record.location.as_ref().and_then(f).filter(|_| precise)
        };
        let location = GeoLocation {
            city: record.city.as_ref().and_then(|c| english(&c.names)),
            state: subdivision.and_then(|s| s.iso_code.clone().or_else(|| english(&s.names))),
            zip: record.postal.and_then(|p| p.code),
            dma: record
                .location
                .as_ref()
                .and_then(|l| l.metro_code)
                .map(|m| m.to_string()),
            country: record.country.and_then(|c| c.iso_code),
            latitude: coordinate(|l| l.latitude),
            longitude: coordinate(|l| l.longitude),
        };
        (!location.is_empty()).then_some(location)
    }
}
