//! The rate buckets, client shares and refusals of [`super::Manager`].

use super::*;

#[test]
fn the_bucket_allows_its_capacity_then_refills_at_its_rate() {
    let start = Instant::now();
    let mut b = Bucket::new(3, Duration::from_secs(60));
    b.at = start;
    let taken = (0..10).filter(|_| b.take(start)).count();
    assert_eq!(taken, 3, "the burst");
    assert!(
        !b.take(start + Duration::from_secs(19)),
        "a third of a token per 20 s"
    );
    assert!(b.take(start + Duration::from_secs(21)));
    assert!(!b.take(start + Duration::from_secs(22)));
    let later = start + Duration::from_secs(3600);
    assert_eq!(
        (0..10).filter(|_| b.take(later)).count(),
        3,
        "never more than the capacity"
    );
}

fn config(rate_count: u32) -> OnDemand {
    OnDemand {
        ask: "http://127.0.0.1:1/ask".into(),
        rate_count,
        rate_per: Duration::from_secs(60),
        retry: Duration::from_secs(600),
        waiting: 64,
        concurrency: 8,
        ask_timeout: Duration::from_secs(5),
    }
}

fn state(config: &OnDemand, start: Instant) -> State {
    let mut bucket = Bucket::new(config.rate_count, config.rate_per);
    bucket.at = start;
    State {
        certs: BTreeMap::new(),
        refused: HashMap::new(),
        bucket,
        clients: HashMap::new(),
    }
}

#[test]
fn one_client_spends_half_the_rate_and_leaves_the_rest_to_others() {
    let config = config(10);
    let start = Instant::now();
    let mut s = state(&config, start);
    let scanner = Some("192.0.2.7".parse().unwrap());
    let results: Vec<_> = (0..8)
        .map(|_| s.take_token(scanner, &config, start))
        .collect();
    assert_eq!(
        results.iter().filter(|r| r.is_ok()).count(),
        5,
        "{results:?}"
    );
    assert_eq!(results[5], Err(Spent::Client));
    let other = Some("198.51.100.1".parse().unwrap());
    let theirs = (0..8)
        .filter(|_| s.take_token(other, &config, start).is_ok())
        .count();
    assert_eq!(theirs, 5, "the other half is left to the others");
    let third = Some("203.0.113.9".parse().unwrap());
    assert_eq!(s.take_token(third, &config, start), Err(Spent::Server));
    // A minute later both buckets are full again: the clients are forgotten.
    let later = start + Duration::from_secs(61);
    assert_eq!(s.take_token(third, &config, later), Ok(()));
    assert_eq!(s.clients.len(), 1, "only the client that spent since");
}

#[test]
fn a_refused_client_share_takes_no_server_token() {
    let config = config(2);
    let start = Instant::now();
    let mut s = state(&config, start);
    let scanner = Some("192.0.2.7".parse().unwrap());
    assert_eq!(s.take_token(scanner, &config, start), Ok(()));
    for _ in 0..5 {
        assert_eq!(s.take_token(scanner, &config, start), Err(Spent::Client));
    }
    let other = Some("198.51.100.1".parse().unwrap());
    assert_eq!(s.take_token(other, &config, start), Ok(()));
    // No client known (a renewal, an old router): the server's bucket only.
    assert_eq!(s.take_token(None, &config, start), Err(Spent::Server));
}

#[test]
fn an_ipv6_client_is_its_64_and_a_mapped_ipv4_its_address() {
    let key = |s: &str| client_key(s.parse().unwrap()).to_string();
    assert_eq!(key("2001:db8:1:2:aaaa::1"), "2001:db8:1:2::");
    assert_eq!(key("2001:db8:1:2:ffff:1:2:3"), "2001:db8:1:2::");
    assert_ne!(key("2001:db8:1:3::1"), key("2001:db8:1:2::1"));
    assert_eq!(key("::ffff:192.0.2.1"), "192.0.2.1");
    assert_eq!(key("192.0.2.1"), "192.0.2.1");
    assert_eq!((share(1), share(10), share(3)), (1, 5, 2));
}
