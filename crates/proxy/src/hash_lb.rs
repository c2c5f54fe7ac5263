//! Consistent hashing (DestinationRule `loadBalancer.consistentHash`), as Envoy does it: the
//! request's key hashed with xxHash64 ([`HashPolicy`]), mapped to an endpoint by a Ketama ring
//! ([`RingHash`], Istio's default) or a Maglev table ([`Maglev`]).
//!
//! Both are built once per snapshot per cluster from the endpoints' addresses, exactly as Envoy
//! builds them (same keys, same hashes, same order), so a client keeps its endpoint across a
//! switch between Envoy and Ama sidecars. Envoy builds them over the endpoints in service (the
//! healthy ones, or all of them in panic) and rebuilds them when that set changes, outlier
//! ejections included: the caller builds from the endpoints it may pick and maps the returned
//! index back.
//!
//! A request without the key (no such header, cookie or query parameter) is not hashed: Envoy
//! then picks with a random 64-bit number as the hash, which spreads those requests over the
//! endpoints at random (the caller does the same: `pick(rng.random())`). A cookie key with a TTL
//! is the exception: the proxy makes the cookie up ([`HashPolicy::generated_cookie`]), hashes
//! it and sets it on the response. Retries of a consistently hashed request go to the same
//! endpoint: Istio drops the previous-hosts predicate for them.

use std::net::{IpAddr, SocketAddr};

use http::{HeaderMap, HeaderName, HeaderValue};
use xxhash_rust::xxh64::xxh64;

/// Envoy's default minimum ring size.
pub const DEFAULT_MIN_RING_SIZE: u64 = 1024;
/// Envoy's default maximum ring size (Istio sets none).
pub const MAX_RING_SIZE: u64 = 8 * 1024 * 1024;
/// Envoy's default Maglev table size.
pub const DEFAULT_MAGLEV_TABLE_SIZE: u64 = 65537;

/// A consistent-hash configuration Envoy would refuse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HashLbError {
    /// Maglev's table size must be prime.
    #[error("maglev tableSize {0}: must be a prime number")]
    TableSizeNotPrime(u64),
    /// A ring larger than Envoy's maximum.
    #[error("ring hash minimumRingSize {0}: must be at most {MAX_RING_SIZE}")]
    RingTooLarge(u64),
    /// Not a header name.
    #[error("consistentHash httpHeaderName {0:?}: not a valid header name")]
    HeaderName(String),
}

/// The endpoint choice of one cluster: a ring or a table, over endpoints by index.
#[derive(Debug, Clone)]
pub enum HashLb {
    /// Ketama ring.
    Ring(RingHash),
    /// Maglev table.
    Maglev(Maglev),
}

impl HashLb {
    /// Builds the ring or table `algorithm` names over `endpoints`.
    pub fn build(
        algorithm: &xds::HashAlgorithm,
        endpoints: &[SocketAddr],
    ) -> Result<HashLb, HashLbError> {
        Ok(match *algorithm {
            xds::HashAlgorithm::Ring { minimum_ring_size } => {
                HashLb::Ring(RingHash::new(endpoints, minimum_ring_size)?)
            }
            xds::HashAlgorithm::Maglev { table_size } => {
                HashLb::Maglev(Maglev::new(endpoints, table_size)?)
            }
        })
    }

    /// The index (into the endpoints it was built from) of the endpoint for `hash`; `None`
    /// with no endpoints.
    pub fn pick(&self, hash: u64) -> Option<usize> {
        match self {
            HashLb::Ring(r) => r.pick(hash),
            HashLb::Maglev(m) => m.pick(hash),
        }
    }
}

/// Envoy's `RingHashLoadBalancer::Ring`: each endpoint hashed at several points
/// (`xxHash64("<ip>:<port>_<i>")`), enough for the ring to hold at least the minimum size, and
/// a hash served by the first point at or after it, wrapping around.
#[derive(Debug, Clone)]
pub struct RingHash {
    /// Sorted hashes.
    hashes: Box<[u64]>,
    /// The endpoint at each hash.
    endpoints: Box<[u32]>,
}

impl RingHash {
    /// The ring over `endpoints` (equal weights) of at least `min_size` points (1024 when 0).
    pub fn new(endpoints: &[SocketAddr], min_size: u64) -> Result<RingHash, HashLbError> {
        let min_size = if min_size == 0 {
            DEFAULT_MIN_RING_SIZE
        } else {
            min_size
        };
        if min_size > MAX_RING_SIZE {
            return Err(HashLbError::RingTooLarge(min_size));
        }
        if endpoints.is_empty() {
            return Ok(RingHash {
                hashes: Box::new([]),
                endpoints: Box::new([]),
            });
        }
        // Envoy's arithmetic, in the same floating point operations: each endpoint's normalized
        // weight is 1/n, the scale makes the least weighted endpoint get a whole number of
        // points, and running sums hand out the points.
        let weight = 1.0 / endpoints.len() as f64;
        let scale = ((weight * min_size as f64).ceil() / weight).min(MAX_RING_SIZE as f64);
        let mut ring: Vec<(u64, u32)> = Vec::with_capacity(scale.ceil() as usize);
        let mut key = String::new();
        let (mut current, mut target) = (0.0f64, 0.0f64);
        for (idx, addr) in endpoints.iter().enumerate() {
            target += scale * weight;
            let mut i = 0u64;
            while current < target {
                use std::fmt::Write;
                key.clear();
                // Writing to a String cannot fail.
                let _ = write!(key, "{addr}_{i}");
                ring.push((xxh64(key.as_bytes(), 0), idx as u32));
                i += 1;
                current += 1.0;
            }
        }
        ring.sort_by_key(|(h, _)| *h);
        Ok(RingHash {
            hashes: ring.iter().map(|(h, _)| *h).collect(),
            endpoints: ring.iter().map(|(_, e)| *e).collect(),
        })
    }

    /// The endpoint for `hash`: the first point at or after it, the first point past the last.
    pub fn pick(&self, hash: u64) -> Option<usize> {
        if self.hashes.is_empty() {
            return None;
        }
        let i = self.hashes.partition_point(|h| *h < hash);
        let i = if i == self.hashes.len() { 0 } else { i };
        Some(self.endpoints[i] as usize)
    }

    /// Points on the ring (Envoy's `ring_hash_lb.size`).
    pub fn len(&self) -> usize {
        self.hashes.len()
    }

    /// True with no endpoints.
    pub fn is_empty(&self) -> bool {
        self.hashes.is_empty()
    }
}

/// Envoy's Maglev table (the paper's listing 1): endpoints in order of their address text, each
/// with offset `xxHash64(addr) % M` and skip `xxHash64(addr, seed 1) % (M − 1) + 1`, filling
/// the table in turns; a hash is served by entry `hash % M`.
#[derive(Debug, Clone)]
pub struct Maglev {
    table: Box<[u32]>,
}

impl Maglev {
    /// The table over `endpoints` (equal weights) of `size` entries (65537 when 0; a prime).
    pub fn new(endpoints: &[SocketAddr], size: u64) -> Result<Maglev, HashLbError> {
        let size = if size == 0 {
            DEFAULT_MAGLEV_TABLE_SIZE
        } else {
            size
        };
        if !is_prime(size) {
            return Err(HashLbError::TableSizeNotPrime(size));
        }
        if endpoints.is_empty() {
            return Ok(Maglev {
                table: Box::new([]),
            });
        }
        struct Entry {
            endpoint: u32,
            offset: u64,
            skip: u64,
            next: u64,
            target: f64,
        }
        let mut keyed: Vec<(String, u32)> = endpoints
            .iter()
            .enumerate()
            .map(|(i, a)| (a.to_string(), i as u32))
            .collect();
        keyed.sort();
        let mut entries: Vec<Entry> = keyed
            .iter()
            .map(|(key, i)| Entry {
                endpoint: *i,
                offset: xxh64(key.as_bytes(), 0) % size,
                skip: xxh64(key.as_bytes(), 1) % (size - 1) + 1,
                next: 0,
                target: 0.0,
            })
            .collect();
        // Equal weights: every endpoint takes a slot in every turn; the weight bookkeeping is
        // Envoy's, kept so the order of turns is its own.
        let weight = 1.0 / endpoints.len() as f64;
        let permutation = |e: &Entry| (e.offset + e.skip * e.next) % size;
        let mut table = vec![u32::MAX; size as usize];
        let mut filled = 0u64;
        let mut turn = 1u64;
        while filled < size {
            for e in entries.iter_mut() {
                if filled >= size {
                    break;
                }
                if (turn as f64) * weight < e.target {
                    continue;
                }
                e.target += weight;
                let mut c = permutation(e);
                while table[c as usize] != u32::MAX {
                    e.next += 1;
                    c = permutation(e);
                }
                table[c as usize] = e.endpoint;
                e.next += 1;
                filled += 1;
            }
            turn += 1;
        }
        Ok(Maglev {
            table: table.into(),
        })
    }

    /// The endpoint for `hash`.
    pub fn pick(&self, hash: u64) -> Option<usize> {
        if self.table.is_empty() {
            return None;
        }
        Some(self.table[(hash % self.table.len() as u64) as usize] as usize)
    }
}

fn is_prime(n: u64) -> bool {
    if n < 2 {
        return false;
    }
    let mut d = 2;
    while d * d <= n {
        if n.is_multiple_of(d) {
            return false;
        }
        d += 1;
    }
    true
}

/// What a request's hash is taken over, compiled once per snapshot (Envoy's route
/// `hash_policy`, one entry as Istio generates it).
#[derive(Debug, Clone)]
pub enum HashPolicy {
    /// A request header's values.
    Header(HeaderName),
    /// A cookie's value; with a TTL, a cookie is made up when the request has none.
    Cookie {
        /// Cookie name.
        name: String,
        /// `Path` of a made-up cookie.
        path: Option<String>,
        /// `Max-Age` of a made-up cookie, whole seconds as Envoy keeps it; `None`: no cookie is
        /// made up.
        ttl_secs: Option<u64>,
    },
    /// The client's IP address.
    SourceIp,
    /// A query parameter's first value.
    QueryParameter(String),
}

/// The parts of a request a hash may be taken over.
#[derive(Debug, Clone, Copy)]
pub struct RequestParts<'a> {
    /// Request headers.
    pub headers: &'a HeaderMap,
    /// The query (after `?`), if any.
    pub query: Option<&'a str>,
    /// The client's IP (the downstream peer's).
    pub source_ip: Option<IpAddr>,
}

/// A cookie the proxy made up for a request without one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GeneratedCookie {
    /// Its value: 16 lowercase hex digits.
    pub value: String,
    /// The request's hash (of the value, as the next request carrying it will hash).
    pub hash: u64,
    /// The `set-cookie` to add to the response:
    /// `<name>="<value>"; Max-Age=<s>; Path=<path>; HttpOnly` (Max-Age omitted when 0, Path
    /// when none).
    pub set_cookie: HeaderValue,
}

impl HashPolicy {
    /// Compiles `key`.
    pub fn compile(key: &xds::HashKey) -> Result<HashPolicy, HashLbError> {
        Ok(match key {
            xds::HashKey::Header(name) => HashPolicy::Header(
                HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes())
                    .map_err(|_| HashLbError::HeaderName(name.clone()))?,
            ),
            xds::HashKey::Cookie { name, path, ttl_ms } => HashPolicy::Cookie {
                name: name.clone(),
                path: path.clone().filter(|p| !p.is_empty()),
                ttl_secs: ttl_ms.map(|ms| ms / 1000),
            },
            xds::HashKey::SourceIp => HashPolicy::SourceIp,
            xds::HashKey::QueryParameter(p) => HashPolicy::QueryParameter(p.clone()),
        })
    }

    /// The request's hash, or `None` when the request lacks the key (the caller then hashes a
    /// random number, or makes a cookie up: [`HashPolicy::generated_cookie`]).
    pub fn hash(&self, req: &RequestParts<'_>) -> Option<u64> {
        match self {
            HashPolicy::Header(name) => {
                let mut values: Vec<&[u8]> = req
                    .headers
                    .get_all(name)
                    .iter()
                    .map(HeaderValue::as_bytes)
                    .collect();
                if values.is_empty() {
                    return None;
                }
                // Envoy sorts the values so their order does not matter, and chains the hashes.
                values.sort_unstable();
                Some(values.iter().fold(0, |seed, v| xxh64(v, seed)))
            }
            HashPolicy::Cookie { name, .. } => cookie_value(req.headers, name).map(|v| xxh64(v, 0)),
            HashPolicy::SourceIp => req.source_ip.map(|ip| xxh64(ip.to_string().as_bytes(), 0)),
            HashPolicy::QueryParameter(name) => {
                query_value(req.query?, name).map(|v| xxh64(v.as_bytes(), 0))
            }
        }
    }

    /// For a cookie key with a TTL, the cookie Envoy's router makes up for a request without
    /// it: the hex of `xxHash64("<client ip:port><proxy ip:port>")` over the downstream
    /// connection's addresses (`remote`, the app's; `local`, the original destination), so one
    /// connection gets one cookie. `None` for other keys.
    pub fn generated_cookie(
        &self,
        remote: SocketAddr,
        local: SocketAddr,
    ) -> Option<GeneratedCookie> {
        let HashPolicy::Cookie {
            name,
            path,
            ttl_secs: Some(ttl),
        } = self
        else {
            return None;
        };
        let value = format!("{:016x}", xxh64(format!("{remote}{local}").as_bytes(), 0));
        let mut set_cookie = format!("{name}=\"{value}\"");
        if *ttl != 0 {
            set_cookie.push_str(&format!("; Max-Age={ttl}"));
        }
        if let Some(p) = path {
            set_cookie.push_str("; Path=");
            set_cookie.push_str(p);
        }
        set_cookie.push_str("; HttpOnly");
        Some(GeneratedCookie {
            hash: xxh64(value.as_bytes(), 0),
            set_cookie: HeaderValue::from_str(&set_cookie).ok()?,
            value,
        })
    }
}

/// The value of cookie `name` in the request's `cookie` headers, as Envoy's
/// `Http::Utility::parseCookieValue` reads it: first match, pairs split on `;`, leading spaces
/// skipped, one pair of surrounding double quotes removed.
fn cookie_value<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a [u8]> {
    for h in headers.get_all(http::header::COOKIE) {
        for pair in h.as_bytes().split(|b| *b == b';') {
            let Some(start) = pair.iter().position(|b| *b != b' ') else {
                continue;
            };
            let pair = &pair[start..];
            let Some(eq) = pair.iter().position(|b| *b == b'=') else {
                continue;
            };
            if &pair[..eq] == name.as_bytes() {
                let v = &pair[eq + 1..];
                return Some(match v {
                    [b'"', inner @ .., b'"'] => inner,
                    v => v,
                });
            }
        }
    }
    None
}

/// The first value of query parameter `name`, undecoded as Envoy's `parseQueryString` leaves it
/// (`name` alone is an empty value).
fn query_value<'a>(query: &'a str, name: &str) -> Option<&'a str> {
    query.split('&').find_map(|p| match p.split_once('=') {
        Some((k, v)) if k == name => Some(v),
        None if p == name => Some(""),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ports(ps: &[u16]) -> Vec<SocketAddr> {
        ps.iter()
            .map(|p| SocketAddr::from(([127, 0, 0, 1], *p)))
            .collect()
    }

    #[test]
    fn xxhash64_is_envoys() {
        // Envoy's HashUtil tests: xxHash64("foo") with seed 0.
        assert_eq!(xxh64(b"foo", 0), 3728699739546630719);
    }

    #[test]
    fn ring_is_envoys() {
        // Envoy's RingHashLoadBalancerTest.Basic: six endpoints, minimum 12, and its ring.
        let ring = RingHash::new(&ports(&[90, 91, 92, 93, 94, 95]), 12).unwrap();
        assert_eq!(ring.len(), 12);
        let expected: [(u16, u64); 12] = [
            (94, 833437586790550860),
            (92, 928266305478181108),
            (90, 1033482794131418490),
            (95, 3551244743356806947),
            (93, 3851675632748031481),
            (91, 5583722120771150861),
            (91, 6311230543546372928),
            (93, 7700377290971790572),
            (95, 13144177310400110813),
            (92, 13444792449719432967),
            (94, 15516499411664133160),
            (90, 16117243373044804889),
        ];
        for (i, (port, hash)) in expected.iter().enumerate() {
            assert_eq!(ring.hashes[i], *hash, "point {i}");
            assert_eq!(ring.endpoints[i] as u16 + 90, *port, "point {i}");
        }
        assert_eq!(ring.pick(0), Some(4));
        assert_eq!(ring.pick(u64::MAX), Some(4));
        assert_eq!(ring.pick(3551244743356806947), Some(5));
        assert_eq!(ring.pick(3551244743356806948), Some(3));
        assert_eq!(ring.pick(16117243373044804880), Some(0));
    }

    #[test]
    fn ring_sizes_are_envoys() {
        // Two endpoints, minimum 3: two points each (Envoy's UnevenHosts).
        let ring = RingHash::new(&ports(&[80, 81]), 3).unwrap();
        assert_eq!(ring.len(), 4);
        assert_eq!(
            &*ring.hashes,
            &[
                5454692015285649509,
                7859399908942313493,
                13838424394637650569,
                16064866803292627174
            ]
        );
        assert_eq!(ring.pick(0), Some(0));
        // The default minimum with three endpoints: 342 points each.
        let ring = RingHash::new(&ports(&[1, 2, 3]), 0).unwrap();
        assert_eq!(ring.len(), 1026);
        assert!(RingHash::new(&[], 0).unwrap().pick(1).is_none());
        assert!(RingHash::new(&ports(&[1]), MAX_RING_SIZE + 1).is_err());
    }

    #[test]
    fn maglev_is_envoys() {
        // Envoy's MaglevLoadBalancerTest.Basic: table of 7.
        let m = Maglev::new(&ports(&[90, 91, 92, 93, 94, 95]), 7).unwrap();
        let expected = [2, 4, 0, 1, 5, 0, 3];
        for h in 0..21u64 {
            assert_eq!(m.pick(h), Some(expected[(h % 7) as usize]), "hash {h}");
        }
        // Endpoint order does not matter: the table is built in address order.
        let m2 = Maglev::new(&ports(&[95, 94, 93, 92, 91, 90]), 7).unwrap();
        for h in 0..7u64 {
            assert_eq!(m2.pick(h).map(|i| 5 - i), m.pick(h));
        }
        assert_eq!(
            Maglev::new(&ports(&[90]), 8).unwrap_err(),
            HashLbError::TableSizeNotPrime(8)
        );
        let big = Maglev::new(&ports(&[1, 2, 3]), 0).unwrap();
        assert_eq!(big.table.len(), 65537);
        let mut counts = [0usize; 3];
        for e in big.table.iter() {
            counts[*e as usize] += 1;
        }
        assert!(
            counts.iter().all(|c| (21845..=21846).contains(c)),
            "{counts:?}"
        );
    }

    fn req<'a>(headers: &'a HeaderMap, query: Option<&'a str>) -> RequestParts<'a> {
        RequestParts {
            headers,
            query,
            source_ip: Some("10.1.2.3".parse().unwrap()),
        }
    }

    #[test]
    fn header_hash_chains_sorted_values() {
        let p = HashPolicy::compile(&xds::HashKey::Header("X-User".into())).unwrap();
        let mut h = HeaderMap::new();
        assert_eq!(p.hash(&req(&h, None)), None);
        h.insert("x-user", "foo".parse().unwrap());
        assert_eq!(p.hash(&req(&h, None)), Some(xxh64(b"foo", 0)));
        h.append("x-user", "bar".parse().unwrap());
        let both = xxh64(b"foo", xxh64(b"bar", 0));
        assert_eq!(p.hash(&req(&h, None)), Some(both));
        let mut h2 = HeaderMap::new();
        h2.insert("x-user", "bar".parse().unwrap());
        h2.append("x-user", "foo".parse().unwrap());
        assert_eq!(p.hash(&req(&h2, None)), Some(both));
        assert!(HashPolicy::compile(&xds::HashKey::Header("bad header".into())).is_err());
    }

    #[test]
    fn cookie_query_and_source_ip_hashes() {
        let p = HashPolicy::compile(&xds::HashKey::Cookie {
            name: "user".into(),
            path: None,
            ttl_ms: None,
        })
        .unwrap();
        let mut h = HeaderMap::new();
        h.insert("cookie", "a=1; user=\"alice\"; b=2".parse().unwrap());
        assert_eq!(p.hash(&req(&h, None)), Some(xxh64(b"alice", 0)));
        let mut h = HeaderMap::new();
        h.insert("cookie", "a=1".parse().unwrap());
        h.append("cookie", "user=bob".parse().unwrap());
        assert_eq!(p.hash(&req(&h, None)), Some(xxh64(b"bob", 0)));
        h.remove("cookie");
        h.insert("cookie", "username=x;  ; xuser=y".parse().unwrap());
        assert_eq!(p.hash(&req(&h, None)), None);
        // No TTL: nothing is made up.
        assert!(
            p.generated_cookie(sa("10.0.0.1:1"), sa("10.0.0.2:2"))
                .is_none()
        );

        let q = HashPolicy::compile(&xds::HashKey::QueryParameter("u".into())).unwrap();
        let h = HeaderMap::new();
        assert_eq!(
            q.hash(&req(&h, Some("a=1&u=x%20y&u=z"))),
            Some(xxh64(b"x%20y", 0))
        );
        assert_eq!(q.hash(&req(&h, Some("u"))), Some(xxh64(b"", 0)));
        assert_eq!(q.hash(&req(&h, Some("uu=1"))), None);
        assert_eq!(q.hash(&req(&h, None)), None);

        let s = HashPolicy::compile(&xds::HashKey::SourceIp).unwrap();
        assert_eq!(s.hash(&req(&h, None)), Some(xxh64(b"10.1.2.3", 0)));
    }

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_cookie_with_a_ttl_is_made_up_per_connection() {
        let p = HashPolicy::compile(&xds::HashKey::Cookie {
            name: "session".into(),
            path: Some("/api".into()),
            ttl_ms: Some(60_500),
        })
        .unwrap();
        let (remote, local) = (sa("10.0.0.1:40000"), sa("10.96.0.5:80"));
        let c = p.generated_cookie(remote, local).unwrap();
        let expected = xxh64(b"10.0.0.1:4000010.96.0.5:80", 0);
        assert_eq!(c.value, format!("{expected:016x}"));
        assert_eq!(c.value.len(), 16);
        assert_eq!(c.hash, xxh64(c.value.as_bytes(), 0));
        assert_eq!(
            c.set_cookie,
            format!("session=\"{}\"; Max-Age=60; Path=/api; HttpOnly", c.value)
        );
        // The next request carries it and hashes the same.
        let mut h = HeaderMap::new();
        h.insert(
            "cookie",
            format!("session=\"{}\"", c.value).parse().unwrap(),
        );
        assert_eq!(p.hash(&req(&h, None)), Some(c.hash));
        // Same connection, same cookie; another connection, another.
        assert_eq!(p.generated_cookie(remote, local).unwrap(), c);
        assert_ne!(
            p.generated_cookie(sa("10.0.0.1:40001"), local)
                .unwrap()
                .value,
            c.value
        );
        // A TTL under a second: a session cookie (no Max-Age).
        let p = HashPolicy::compile(&xds::HashKey::Cookie {
            name: "s".into(),
            path: None,
            ttl_ms: Some(500),
        })
        .unwrap();
        let c = p.generated_cookie(remote, local).unwrap();
        assert_eq!(c.set_cookie, format!("s=\"{}\"; HttpOnly", c.value));
    }

    #[test]
    fn build_follows_the_algorithm() {
        let eps = ports(&[1, 2, 3]);
        let ring = HashLb::build(
            &xds::HashAlgorithm::Ring {
                minimum_ring_size: 0,
            },
            &eps,
        )
        .unwrap();
        assert!(matches!(ring, HashLb::Ring(ref r) if r.len() == 1026));
        let m = HashLb::build(&xds::HashAlgorithm::Maglev { table_size: 0 }, &eps).unwrap();
        assert!(matches!(m, HashLb::Maglev(_)));
        // The same key always lands on the same endpoint.
        for h in [0u64, 1, 1 << 40, u64::MAX] {
            assert_eq!(ring.pick(h), ring.pick(h));
            assert!(m.pick(h).unwrap() < 3);
        }
    }
}
