//! Geography for location criteria: the world-city gazetteer shipped with the project
//! (`deploy/gazetteer/cities.tsv`, GeoNames data, CC-BY 4.0) and great-circle distances.
//!
//! The gazetteer is compiled into the binary and parsed once, on first use, so a named city
//! in a definition resolves the same way on every node without any file to deploy.

use std::sync::OnceLock;

const GAZETTEER_TSV: &str = include_str!("../../deploy/gazetteer/cities.tsv");

/// Mean Earth radius used by the haversine formula.
const EARTH_RADIUS_KM: f64 = 6371.0088;
pub const KM_PER_MILE: f64 = 1.609_344;

#[derive(Debug, Clone, PartialEq)]
pub struct City {
    pub name: String,
    pub ascii_name: String,
    /// ISO 3166-1 alpha-2.
    pub country: String,
    /// GeoNames first-level division code (a US state's postal code, "ENG" in GB, ...).
    pub admin1: String,
    pub latitude: f64,
    pub longitude: f64,
    pub population: u64,
}

/// Every city of the gazetteer, most populous first.
pub fn gazetteer() -> &'static [City] {
    static CITIES: OnceLock<Vec<City>> = OnceLock::new();
    CITIES.get_or_init(|| {
        GAZETTEER_TSV
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .filter_map(|line| {
                let f: Vec<&str> = line.split('\t').collect();
                if f.len() < 8 {
                    return None;
                }
                Some(City {
                    name: f[1].to_string(),
                    ascii_name: f[2].to_string(),
                    country: f[3].to_string(),
                    admin1: f[4].to_string(),
                    latitude: f[5].parse().ok()?,
                    longitude: f[6].parse().ok()?,
                    population: f[7].parse().unwrap_or(0),
                })
            })
            .collect()
    })
}

/// Finds a city by name, optionally qualified by country and first-level division:
/// "Paris", "Paris, FR", "Portland, US-ME", "Portland, ME". Names match case-insensitively,
/// with or without accents; among several matches the most populous wins.
pub fn find_city(query: &str) -> Result<&'static City, String> {
    let mut parts = query.splitn(2, ',');
    let name = parts.next().unwrap_or("").trim().to_lowercase();
    let qualifier = parts.next().map(|q| q.trim().to_uppercase());
    if name.is_empty() {
        return Err("the city name is empty".to_string());
    }
    let (country, admin1) = match qualifier.as_deref() {
        None | Some("") => (None, None),
        Some(q) => match q.split_once('-') {
            Some((c, a)) => (Some(c.trim().to_string()), Some(a.trim().to_string())),
            None if q.len() == 2 => (Some(q.to_string()), None),
            None => (None, Some(q.to_string())),
        },
    };
    let found = gazetteer().iter().find(|c| {
        (c.name.to_lowercase() == name || c.ascii_name.to_lowercase() == name)
            && country.as_deref().is_none_or(|want| c.country == want)
            && admin1.as_deref().is_none_or(|want| c.admin1 == want)
    });
    // A two-letter qualifier may be a US state ("Portland, ME") rather than a country.
    let found = found.or_else(|| match (&country, &admin1) {
        (Some(code), None) => gazetteer().iter().find(|c| {
            (c.name.to_lowercase() == name || c.ascii_name.to_lowercase() == name)
                && c.admin1 == *code
        }),
        _ => None,
    });
    found.ok_or_else(|| format!("no city \"{query}\" in the gazetteer"))
}

/// Great-circle distance in kilometres (haversine).
pub fn distance_km(lat1: f64, lon1: f64, lat2: f64, lon2: f64) -> f64 {
    let (p1, p2) = (lat1.to_radians(), lat2.to_radians());
    let dp = (lat2 - lat1).to_radians();
    let dl = (lon2 - lon1).to_radians();
    let a = (dp / 2.0).sin().powi(2) + p1.cos() * p2.cos() * (dl / 2.0).sin().powi(2);
    // Rounding can push `a` past 1 near antipodes, where asin would give NaN.
    2.0 * EARTH_RADIUS_KM * a.clamp(0.0, 1.0).sqrt().asin()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cities_resolve_by_name_country_and_state() {
        assert!(gazetteer().len() > 30_000);
        let paris = find_city("paris").unwrap();
        assert_eq!(paris.country, "FR");
        assert_eq!(find_city("Portland").unwrap().admin1, "OR");
        assert_eq!(find_city("Portland, US-ME").unwrap().admin1, "ME");
        assert_eq!(find_city("Portland, ME").unwrap().admin1, "ME");
        assert_eq!(find_city("London, GB").unwrap().admin1, "ENG");
        assert_eq!(find_city("Malmo").unwrap().country, "SE");
        assert!(find_city("Nowhereville").is_err());
    }

    #[test]
    fn distances_are_great_circle() {
        let london = find_city("London, GB").unwrap();
        let paris = find_city("Paris, FR").unwrap();
        let d = distance_km(
            london.latitude,
            london.longitude,
            paris.latitude,
            paris.longitude,
        );
        assert!((340.0..350.0).contains(&d), "{d}");
        assert_eq!(distance_km(10.0, 20.0, 10.0, 20.0), 0.0);
    }
}
