//! Geo-enrichment at the edge: a MaxMind DB (GeoIP2/GeoLite2 City or Country, DB-IP in .mmdb
//! form) read with `maxminddb`, consulted by the protection engine while the full address is
//! still there — it is truncated right after. Adds `country` (ISO 3166-1 alpha-2) and `city`
//! (English name), also as `<field>_country` and `<field>_city`; the protection engine keeps
//! only those the dataset's contract lists as public fields.

use std::collections::HashSet;
use std::net::IpAddr;
use std::path::Path;

use maxminddb::{geoip2, Reader};
use serde_json::{Map, Value};
use warden_policy::protect::NetworkEnricher;

use crate::{Error, Result};

/// Country and city of addresses, for the datasets whose stages list `geo_enrich`.
pub struct GeoEnricher {
    reader: Reader<Vec<u8>>,
    datasets: HashSet<String>,
}

impl std::fmt::Debug for GeoEnricher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GeoEnricher")
            .field("database_type", &self.reader.metadata.database_type)
            .field("datasets", &self.datasets)
            .finish()
    }
}

impl GeoEnricher {
    /// Opens a MaxMind DB file for `datasets`.
    ///
    /// # Errors
    /// A file that cannot be read or is not a MaxMind DB.
    pub fn open(path: &Path, datasets: HashSet<String>) -> Result<Self> {
        let reader = Reader::open_readfile(path)
            .map_err(|e| Error::Invalid(format!("geo database {}: {e}", path.display())))?;
        Ok(Self { reader, datasets })
    }

    /// Country code and English city name of an address, when the database knows them.
    pub fn locate(&self, ip: IpAddr) -> (Option<String>, Option<String>) {
        let Ok(Some(city)) = self.reader.lookup::<geoip2::City<'_>>(ip) else {
            return (None, None);
        };
        let country = city.country.and_then(|c| c.iso_code).map(str::to_owned);
        let name = city
            .city
            .and_then(|c| c.names)
            .and_then(|n| n.get("en").map(|s| (*s).to_owned()));
        (country, name)
    }
}

impl NetworkEnricher for GeoEnricher {
    fn enrich(&self, dataset: &str, field: &str, ip: IpAddr) -> Map<String, Value> {
        let mut out = Map::new();
        if !self.datasets.contains(dataset) {
            return out;
        }
        let (country, city) = self.locate(ip);
        if let Some(c) = country {
            out.insert(format!("{field}_country"), Value::String(c.clone()));
            out.insert("country".to_owned(), Value::String(c));
        }
        if let Some(c) = city {
            out.insert(format!("{field}_city"), Value::String(c.clone()));
            out.insert("city".to_owned(), Value::String(c));
        }
        out
    }
}

/// Writes small MaxMind DB files (GeoIP2-City layout) for tests: tests cannot download one.
#[cfg(any(test, feature = "testkit"))]
pub mod testkit {
    use std::net::Ipv4Addr;

    /// One network of the database: `(address, prefix length, country code, city)`.
    pub type Network<'a> = (Ipv4Addr, u8, &'a str, &'a str);

    fn control(out: &mut Vec<u8>, kind: u8, size: usize) {
        let (ext, base) = if kind > 7 {
            (Some(kind - 7), 0)
        } else {
            (None, kind)
        };
        let head = base << 5;
        match size {
            0..=28 => {
                out.push(head | size as u8);
                out.extend(ext);
            }
            29..=284 => {
                out.push(head | 29);
                out.extend(ext);
                out.push((size - 29) as u8);
            }
            _ => {
                out.push(head | 30);
                out.extend(ext);
                out.extend_from_slice(&((size - 285) as u16).to_be_bytes());
            }
        }
    }

    fn string(out: &mut Vec<u8>, s: &str) {
        control(out, 2, s.len());
        out.extend_from_slice(s.as_bytes());
    }

    fn uint(out: &mut Vec<u8>, kind: u8, v: u64) {
        let bytes = v.to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        control(out, kind, 8 - skip);
        out.extend_from_slice(&bytes[skip..]);
    }

    fn map_head(out: &mut Vec<u8>, n: usize) {
        control(out, 7, n);
    }

    fn names(out: &mut Vec<u8>, en: &str) {
        string(out, "names");
        map_head(out, 1);
        string(out, "en");
        string(out, en);
    }

    fn record(country: &str, city: &str) -> Vec<u8> {
        let mut d = Vec::new();
        map_head(&mut d, 2);
        string(&mut d, "city");
        map_head(&mut d, 1);
        names(&mut d, city);
        string(&mut d, "country");
        map_head(&mut d, 1);
        string(&mut d, "iso_code");
        string(&mut d, country);
        d
    }

    /// The bytes of an IPv4 GeoIP2-City database holding `networks`.
    pub fn city_database(networks: &[Network<'_>]) -> Vec<u8> {
        // A binary trie over the address bits; a leaf is a data offset.
        #[derive(Clone, Copy)]
        enum Slot {
            Empty,
            Node(usize),
            Data(usize),
        }
        let mut nodes: Vec<[Slot; 2]> = vec![[Slot::Empty, Slot::Empty]];
        let mut data = Vec::new();
        for (addr, prefix, country, city) in networks {
            let offset = data.len();
            data.extend(record(country, city));
            let bits = u32::from(*addr);
            let mut node = 0;
            for depth in 0..*prefix {
                let bit = ((bits >> (31 - depth)) & 1) as usize;
                if depth + 1 == *prefix {
                    nodes[node][bit] = Slot::Data(offset);
                } else {
                    node = match nodes[node][bit] {
                        Slot::Node(n) => n,
                        _ => {
                            nodes.push([Slot::Empty, Slot::Empty]);
                            let n = nodes.len() - 1;
                            nodes[node][bit] = Slot::Node(n);
                            n
                        }
                    };
                }
            }
        }
        let count = nodes.len();
        let mut out = Vec::new();
        for node in &nodes {
            for slot in node {
                let v = match slot {
                    Slot::Empty => count,
                    Slot::Node(n) => *n,
                    Slot::Data(off) => count + 16 + off,
                };
                out.extend_from_slice(&(v as u32).to_be_bytes());
            }
        }
        out.extend_from_slice(&[0; 16]);
        out.extend(data);
        out.extend_from_slice(b"\xAB\xCD\xEFMaxMind.com");
        let mut meta = Vec::new();
        map_head(&mut meta, 9);
        string(&mut meta, "binary_format_major_version");
        uint(&mut meta, 5, 2);
        string(&mut meta, "binary_format_minor_version");
        uint(&mut meta, 5, 0);
        string(&mut meta, "build_epoch");
        uint(&mut meta, 9, 1_700_000_000);
        string(&mut meta, "database_type");
        string(&mut meta, "GeoIP2-City");
        string(&mut meta, "description");
        map_head(&mut meta, 1);
        string(&mut meta, "en");
        string(&mut meta, "Warden test database");
        string(&mut meta, "ip_version");
        uint(&mut meta, 5, 4);
        string(&mut meta, "languages");
        control(&mut meta, 11, 1);
        string(&mut meta, "en");
        string(&mut meta, "node_count");
        uint(&mut meta, 6, count as u64);
        string(&mut meta, "record_size");
        uint(&mut meta, 5, 32);
        out.extend(meta);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    #[test]
    fn a_written_database_is_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("city.mmdb");
        std::fs::write(
            &path,
            testkit::city_database(&[
                (Ipv4Addr::new(198, 51, 100, 0), 24, "DE", "Berlin"),
                (Ipv4Addr::new(203, 0, 113, 0), 24, "FR", "Paris"),
                (Ipv4Addr::new(10, 0, 0, 0), 8, "NL", "Amsterdam"),
            ]),
        )
        .unwrap();
        let geo = GeoEnricher::open(&path, HashSet::from(["payments".to_owned()])).unwrap();
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(
            geo.locate(ip("198.51.100.23")),
            (Some("DE".into()), Some("Berlin".into()))
        );
        assert_eq!(
            geo.locate(ip("203.0.113.250")),
            (Some("FR".into()), Some("Paris".into()))
        );
        assert_eq!(
            geo.locate(ip("10.200.1.1")),
            (Some("NL".into()), Some("Amsterdam".into()))
        );
        assert_eq!(geo.locate(ip("192.0.2.1")), (None, None));
        assert_eq!(
            geo.locate(ip("2001:db8::1")),
            (None, None),
            "an IPv6 address in an IPv4 database"
        );
        let added = geo.enrich("payments", "ip", ip("198.51.100.23"));
        assert_eq!(added["country"], "DE");
        assert_eq!(added["ip_city"], "Berlin");
        assert!(geo.enrich("other", "ip", ip("198.51.100.23")).is_empty());
        assert!(GeoEnricher::open(&dir.path().join("missing.mmdb"), HashSet::new()).is_err());
    }
}
