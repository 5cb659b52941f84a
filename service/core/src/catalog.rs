//! The in-memory offer index that every pricing query is served from.
//!
//! Offers are interned (each distinct string is stored once and rows hold 4-byte ids)
//! and kept sorted by the catalog order: spot price ascending, then cloud, region, zone
//! and instance type. That order is the documented tie-break of every listing, and it
//! lets placement stop scanning early. Rows are unique per (cloud, region, zone,
//! instance type): when two sources report the same offer, the newer observation wins.

use crate::cloud::{Architecture, Cloud};
use crate::error::Error;
use crate::filter::{Context, OfferFilter};
use crate::offer::{Gpu, InterruptionRate, Offer};
use std::cmp::Ordering;
use std::collections::HashMap;

/// Index of an interned string.
pub(crate) type Sym = u32;

/// Interned strings. Catalogs hold a few thousand distinct strings for millions of rows.
#[derive(Default, Clone)]
pub(crate) struct Interner {
    names: Vec<Box<str>>,
    index: HashMap<Box<str>, Sym>,
}

impl Interner {
    fn intern(&mut self, name: &str) -> Sym {
        if let Some(&sym) = self.index.get(name) {
            return sym;
        }
        let sym = Sym::try_from(self.names.len()).expect("fewer than 2^32 distinct strings");
        self.names.push(name.into());
        self.index.insert(name.into(), sym);
        sym
    }

    pub(crate) fn get(&self, sym: Sym) -> &str {
        &self.names[sym as usize]
    }

    pub(crate) fn lookup(&self, name: &str) -> Option<Sym> {
        self.index.get(name).copied()
    }

    pub(crate) fn len(&self) -> usize {
        self.names.len()
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = (Sym, &str)> {
        self.names.iter().enumerate().map(|(i, s)| (i as Sym, &**s))
    }

    fn heap_bytes(&self) -> usize {
        let strings: usize = self.names.iter().map(|s| s.len()).sum();
        // Each string is stored twice (vector and map key); the map adds its slot.
        strings * 2
            + self.names.capacity() * std::mem::size_of::<Box<str>>()
            + self.index.capacity() * (std::mem::size_of::<(Box<str>, Sym)>() + 1)
    }
}

/// One offer as the index stores it. `NO_GPU` marks the absence of an accelerator.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Row {
    pub spot_price: f64,
    /// NaN when the source has no on-demand price.
    pub on_demand_price: f64,
    pub observed_at: i64,
    pub vcpus: f64,
    pub memory_gib: f64,
    pub region: Sym,
    pub zone: Sym,
    pub instance_type: Sym,
    pub gpu_name: Sym,
    pub gpu_original_name: Sym,
    pub source: Sym,
    pub gpu_count: u16,
    /// Index into [`Catalog::rate_sources`]; 0 is none. A u16 keeps the row at 72 bytes.
    pub rate_source: u16,
    pub cloud: Cloud,
    pub architecture: Architecture,
    /// Interruption range in percent; `u8::MAX` in `interruption_max` means unknown.
    pub interruption_min: u8,
    pub interruption_max: u8,
}

pub(crate) const UNKNOWN_RATE: u8 = u8::MAX;

impl Row {
    pub(crate) fn interruption(&self) -> InterruptionRate {
        if self.interruption_max == UNKNOWN_RATE {
            InterruptionRate::Unknown
        } else {
            InterruptionRate::Range {
                min_percent: self.interruption_min,
                max_percent: self.interruption_max,
            }
        }
    }

    pub(crate) fn has_gpu(&self) -> bool {
        self.gpu_count > 0
    }
}

/// Where a listing stopped: the catalog-order key of the last offer returned. Paging by
/// key rather than offset keeps pages stable while collectors replace offers.
#[derive(Debug, Clone, PartialEq)]
pub struct PageCursor {
    spot_price: f64,
    cloud: Cloud,
    region: String,
    zone: String,
    instance_type: String,
}

const CURSOR_VERSION: &str = "1";
const CURSOR_SEPARATOR: char = '\u{1f}';

impl PageCursor {
    /// An opaque, URL-safe token.
    pub fn encode(&self) -> String {
        let raw = [
            CURSOR_VERSION,
            &format!("{:016x}", self.spot_price.to_bits()),
            self.cloud.as_str(),
            &self.region,
            &self.zone,
            &self.instance_type,
        ]
        .join(&CURSOR_SEPARATOR.to_string());
        raw.bytes().map(|b| format!("{b:02x}")).collect()
    }

    pub fn decode(token: &str) -> Result<PageCursor, Error> {
        let bad = |why: &str| Error::InvalidPageToken(why.to_string());
        if !token.len().is_multiple_of(2) || !token.is_ascii() {
            return Err(bad("not a token this service issued"));
        }
        let bytes = (0..token.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&token[i..i + 2], 16))
            .collect::<Result<Vec<u8>, _>>()
            .map_err(|_| bad("not a token this service issued"))?;
        let text = String::from_utf8(bytes).map_err(|_| bad("not a token this service issued"))?;
        let parts: Vec<&str> = text.split(CURSOR_SEPARATOR).collect();
        let [version, bits, cloud, region, zone, instance_type] = parts.as_slice() else {
            return Err(bad("not a token this service issued"));
        };
        if *version != CURSOR_VERSION {
            return Err(bad("issued by another version of the service"));
        }
        let bits = u64::from_str_radix(bits, 16).map_err(|_| bad("corrupt price key"))?;
        Ok(PageCursor {
            spot_price: f64::from_bits(bits),
            cloud: Cloud::parse(cloud).ok_or_else(|| bad("corrupt cloud key"))?,
            region: region.to_string(),
            zone: zone.to_string(),
            instance_type: instance_type.to_string(),
        })
    }
}

/// One page of a listing.
#[derive(Debug, Clone)]
pub struct Page {
    pub offers: Vec<Offer>,
    /// Present when more matching offers follow.
    pub next: Option<PageCursor>,
}

/// The price-sorted, interned offer index.
#[derive(Clone, Default)]
pub struct Catalog {
    pub(crate) strings: Interner,
    pub(crate) rows: Vec<Row>,
    empty_sym: Sym,
    /// The distinct interruption-rate sources; index 0 is the empty one.
    rate_sources: Vec<Sym>,
}

impl Catalog {
    /// Builds the index. Offers with a non-finite or negative spot price are dropped,
    /// and duplicates of (cloud, region, zone, instance type) keep the newest observation
    /// (on equal times, the source whose name sorts first).
    pub fn build(offers: impl IntoIterator<Item = Offer>) -> Catalog {
        let mut strings = Interner::default();
        let empty_sym = strings.intern("");
        let mut rate_sources = vec![empty_sym];
        let mut rows: Vec<Row> = Vec::new();
        let mut seen: HashMap<(Cloud, Sym, Sym, Sym), usize> = HashMap::new();
        for offer in offers {
            if !offer.spot_price.is_finite() || offer.spot_price < 0.0 {
                continue;
            }
            let mut row = Self::intern_row(&mut strings, empty_sym, &offer);
            let rate_source = strings.intern(&offer.interruption_source);
            row.rate_source = match rate_sources.iter().position(|s| *s == rate_source) {
                Some(i) => i as u16,
                // Past 65,535 distinct sources (none is realistic) the rest show none.
                None if rate_sources.len() < usize::from(u16::MAX) => {
                    rate_sources.push(rate_source);
                    (rate_sources.len() - 1) as u16
                }
                None => 0,
            };
            let key = (row.cloud, row.region, row.zone, row.instance_type);
            match seen.get(&key) {
                Some(&at) => {
                    let old = &rows[at];
                    let newer = row.observed_at > old.observed_at
                        || (row.observed_at == old.observed_at
                            && strings.get(row.source) < strings.get(old.source));
                    if newer {
                        rows[at] = row;
                    }
                }
                None => {
                    seen.insert(key, rows.len());
                    rows.push(row);
                }
            }
        }
        drop(seen);
        rows.sort_unstable_by(|a, b| order(&strings, a, b));
        rows.shrink_to_fit();
        Catalog {
            strings,
            rows,
            empty_sym,
            rate_sources,
        }
    }

    fn intern_row(strings: &mut Interner, empty: Sym, offer: &Offer) -> Row {
        let (gpu_name, gpu_original_name, gpu_count) = match &offer.gpu {
            Some(gpu) if gpu.count > 0 => (
                strings.intern(&gpu.name),
                strings.intern(&gpu.original_name),
                gpu.count,
            ),
            _ => (empty, empty, 0),
        };
        let (interruption_min, interruption_max) = match offer.interruption_rate {
            InterruptionRate::Unknown => (0, UNKNOWN_RATE),
            InterruptionRate::Range {
                min_percent,
                max_percent,
            } => (min_percent, max_percent.min(100)),
        };
        Row {
            spot_price: offer.spot_price,
            on_demand_price: offer.on_demand_price.unwrap_or(f64::NAN),
            observed_at: offer.observed_at,
            vcpus: offer.vcpus,
            memory_gib: offer.memory_gib,
            region: strings.intern(&offer.region),
            zone: strings.intern(&offer.zone),
            instance_type: strings.intern(&offer.instance_type),
            gpu_name,
            gpu_original_name,
            source: strings.intern(&offer.source),
            gpu_count,
            rate_source: 0,
            cloud: offer.cloud,
            architecture: offer.architecture,
            interruption_min,
            interruption_max,
        }
    }

    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The offer at a catalog position (0 = cheapest).
    pub fn offer(&self, position: usize) -> Offer {
        self.materialize(&self.rows[position])
    }

    /// Every offer in catalog order.
    pub fn iter(&self) -> impl Iterator<Item = Offer> + '_ {
        self.rows.iter().map(|row| self.materialize(row))
    }

    /// Number of offers per source, sorted by source name.
    pub fn count_by_source(&self) -> Vec<(String, usize)> {
        let mut counts: HashMap<Sym, usize> = HashMap::new();
        for row in &self.rows {
            *counts.entry(row.source).or_default() += 1;
        }
        let mut out: Vec<(String, usize)> = counts
            .into_iter()
            .map(|(sym, n)| (self.strings.get(sym).to_string(), n))
            .collect();
        out.sort();
        out
    }

    /// Approximate heap bytes held by the index (rows plus interned strings).
    pub fn heap_bytes(&self) -> usize {
        self.rows.capacity() * std::mem::size_of::<Row>() + self.strings.heap_bytes()
    }

    /// Offers matching `filter` in catalog order, starting after `after`, at most `limit`.
    pub fn list(
        &self,
        filter: &OfferFilter,
        after: Option<&PageCursor>,
        limit: usize,
    ) -> Result<Page, Error> {
        let compiled = filter.compile(self, Context::Listing);
        let start = match after {
            Some(cursor) => self.position_after(cursor),
            None => 0,
        };
        let mut offers = Vec::with_capacity(limit.min(1024));
        let mut more = false;
        for row in &self.rows[start..] {
            if !compiled.accepts(row) {
                continue;
            }
            if offers.len() == limit {
                more = true;
                break;
            }
            offers.push(self.materialize(row));
        }
        let next = if more {
            offers.last().map(|last: &Offer| PageCursor {
                spot_price: last.spot_price,
                cloud: last.cloud,
                region: last.region.clone(),
                zone: last.zone.clone(),
                instance_type: last.instance_type.clone(),
            })
        } else {
            None
        };
        Ok(Page { offers, next })
    }

    /// The first position whose key is strictly greater than the cursor's.
    fn position_after(&self, cursor: &PageCursor) -> usize {
        self.rows.partition_point(|row| {
            let ordering = row
                .spot_price
                .total_cmp(&cursor.spot_price)
                .then(row.cloud.cmp(&cursor.cloud))
                .then_with(|| self.strings.get(row.region).cmp(&cursor.region))
                .then_with(|| self.strings.get(row.zone).cmp(&cursor.zone))
                .then_with(|| {
                    self.strings
                        .get(row.instance_type)
                        .cmp(&cursor.instance_type)
                });
            ordering != Ordering::Greater
        })
    }

    pub(crate) fn materialize(&self, row: &Row) -> Offer {
        let s = |sym| self.strings.get(sym).to_string();
        Offer {
            cloud: row.cloud,
            region: s(row.region),
            zone: s(row.zone),
            instance_type: s(row.instance_type),
            vcpus: row.vcpus,
            memory_gib: row.memory_gib,
            architecture: row.architecture,
            gpu: row.has_gpu().then(|| Gpu {
                name: s(row.gpu_name),
                original_name: s(row.gpu_original_name),
                count: row.gpu_count,
            }),
            on_demand_price: (!row.on_demand_price.is_nan()).then_some(row.on_demand_price),
            spot_price: row.spot_price,
            interruption_rate: row.interruption(),
            interruption_source: self
                .rate_sources
                .get(usize::from(row.rate_source))
                .map(|sym| s(*sym))
                .unwrap_or_default(),
            observed_at: row.observed_at,
            source: s(row.source),
        }
    }

    pub(crate) fn empty_sym(&self) -> Sym {
        self.empty_sym
    }
}

/// Catalog order: spot price, cloud, region, zone, instance type.
fn order(strings: &Interner, a: &Row, b: &Row) -> Ordering {
    a.spot_price
        .total_cmp(&b.spot_price)
        .then(a.cloud.cmp(&b.cloud))
        .then_with(|| strings.get(a.region).cmp(strings.get(b.region)))
        .then_with(|| strings.get(a.zone).cmp(strings.get(b.zone)))
        .then_with(|| {
            strings
                .get(a.instance_type)
                .cmp(strings.get(b.instance_type))
        })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn offer(
        cloud: Cloud,
        region: &str,
        ty: &str,
        vcpus: f64,
        mem: f64,
        spot: f64,
    ) -> Offer {
        Offer {
            cloud,
            region: region.into(),
            zone: String::new(),
            instance_type: ty.into(),
            vcpus,
            memory_gib: mem,
            architecture: Architecture::X86_64,
            gpu: None,
            on_demand_price: Some(spot * 3.0),
            spot_price: spot,
            interruption_rate: InterruptionRate::Unknown,
            interruption_source: String::new(),
            observed_at: 1_700_000_000,
            source: "test".into(),
        }
    }

    #[test]
    fn rows_stay_72_bytes_and_keep_their_interruption_source() {
        assert_eq!(std::mem::size_of::<Row>(), 72);
        let mut rated = offer(Cloud::Aws, "us-east-1", "m5.xlarge", 4.0, 16.0, 0.05);
        rated.interruption_rate = InterruptionRate::from_aws_bucket(0);
        rated.interruption_source = "AWS Spot Instance Advisor, 2025-06-28".into();
        let unrated = offer(Cloud::Gcp, "us-central1", "n2-standard-4", 4.0, 16.0, 0.04);
        let catalog = Catalog::build(vec![rated.clone(), unrated.clone()]);
        let offers: Vec<Offer> = catalog.iter().collect();
        assert_eq!(offers, vec![unrated, rated]);
    }

    #[test]
    fn rows_are_sorted_by_price_then_identity() {
        let catalog = Catalog::build(vec![
            offer(Cloud::Gcp, "us-central1", "n2-standard-4", 4.0, 16.0, 0.05),
            offer(Cloud::Aws, "us-east-1", "m5.xlarge", 4.0, 16.0, 0.05),
            offer(Cloud::Aws, "eu-west-1", "m5.xlarge", 4.0, 16.0, 0.04),
        ]);
        let got: Vec<(String, String)> = catalog
            .iter()
            .map(|o| (o.cloud.to_string(), o.region))
            .collect();
        assert_eq!(
            got,
            vec![
                ("aws".into(), "eu-west-1".into()),
                ("aws".into(), "us-east-1".into()),
                ("gcp".into(), "us-central1".into()),
            ]
        );
    }

    #[test]
    fn duplicates_keep_the_newest_observation() {
        let old = offer(Cloud::Aws, "us-east-1", "m5.xlarge", 4.0, 16.0, 0.05);
        let mut new = old.clone();
        new.spot_price = 0.07;
        new.observed_at += 60;
        new.source = "aws-live".into();
        let catalog = Catalog::build(vec![old.clone(), new.clone()]);
        assert_eq!(catalog.len(), 1);
        assert_eq!(catalog.offer(0), new);
        let catalog = Catalog::build(vec![new.clone(), old]);
        assert_eq!(catalog.offer(0), new);
    }

    #[test]
    fn invalid_prices_are_dropped() {
        let mut nan = offer(Cloud::Aws, "us-east-1", "a", 1.0, 1.0, 0.1);
        nan.spot_price = f64::NAN;
        let mut negative = offer(Cloud::Aws, "us-east-1", "b", 1.0, 1.0, 0.1);
        negative.spot_price = -1.0;
        let catalog = Catalog::build(vec![nan, negative]);
        assert!(catalog.is_empty());
    }

    #[test]
    fn materialize_round_trips_every_field() {
        let mut o = offer(Cloud::Azure, "eastus", "Standard_NC6", 6.0, 56.0, 0.2);
        o.zone = "1".into();
        o.gpu = Some(Gpu {
            name: "K80".into(),
            original_name: "K80".into(),
            count: 1,
        });
        o.on_demand_price = None;
        o.interruption_rate = InterruptionRate::from_aws_bucket(1);
        let catalog = Catalog::build(vec![o.clone()]);
        assert_eq!(catalog.offer(0), o);
    }

    #[test]
    fn paging_by_cursor_visits_every_offer_once() {
        let offers: Vec<Offer> = (0..25)
            .map(|i| {
                offer(
                    Cloud::Aws,
                    "us-east-1",
                    &format!("t{i:02}"),
                    2.0,
                    4.0,
                    0.01 * f64::from(i % 7),
                )
            })
            .collect();
        let catalog = Catalog::build(offers);
        let mut seen = Vec::new();
        let mut cursor: Option<PageCursor> = None;
        loop {
            let page = catalog
                .list(&OfferFilter::default(), cursor.as_ref(), 4)
                .unwrap();
            seen.extend(page.offers.into_iter().map(|o| o.instance_type));
            match page.next {
                Some(next) => {
                    let token = next.encode();
                    cursor = Some(PageCursor::decode(&token).unwrap());
                }
                None => break,
            }
        }
        let all: Vec<String> = catalog.iter().map(|o| o.instance_type).collect();
        assert_eq!(seen, all);
        assert_eq!(seen.len(), 25);
    }

    #[test]
    fn garbage_cursors_are_rejected() {
        assert!(PageCursor::decode("zz").is_err());
        assert!(PageCursor::decode("abc").is_err());
        assert!(PageCursor::decode("41").is_err());
    }
}
