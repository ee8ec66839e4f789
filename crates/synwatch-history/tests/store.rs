//! The history store against real SQLite files in a scratch directory: what one scan writes,
//! paging, filters, pruning, what is set aside, migrations from every version, readers beside
//! the writer, and SIGKILL during heavy writes.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use synwatch_history::schema::{self, MIGRATIONS};
use synwatch_history::{
    ChangeKind, ChangeQuery, ChangeRow, EndpointQuery, HistoryStore, OpenEndpoint, Proto, ScanOutcome, ScanRow, states,
};

/// A scratch directory, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        let path = std::env::temp_dir().join(format!("synwatch-history-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        Scratch(path)
    }

    fn database(&self) -> PathBuf {
        self.0.join("history.sqlite")
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

fn scan(target: &str, ended: f64) -> ScanRow {
    ScanRow {
        target: target.into(),
        started: ended - 5.0,
        ended,
        result: ScanOutcome::Success,
        open: 0,
        closed: 0,
        filtered: 0,
    }
}

fn change(address: &str, proto: Proto, port: u16, old: &'static str, new: &'static str) -> ChangeRow {
    ChangeRow { ip: ip(address), proto, port, old_state: old, new_state: new, reason: None, hostname: None }
}

fn open(address: &str, proto: Proto, port: u16) -> OpenEndpoint {
    OpenEndpoint { ip: ip(address), proto, port, state: states::OPEN, reason: None, hostname: None }
}

fn all_changes() -> ChangeQuery {
    ChangeQuery { limit: 1000, ..ChangeQuery::default() }
}

#[test]
fn the_host_name_of_a_named_target_is_kept_with_its_changes_and_endpoints() {
    let scratch = Scratch::new("hostname");
    let mut store = HistoryStore::open(&scratch.database()).unwrap().store;
    let named = |endpoint: OpenEndpoint| OpenEndpoint { hostname: Some("db.example.org".into()), ..endpoint };
    store.record_scan(&scan("db", 100.0), &[], &[named(open("192.0.2.1", Proto::Tcp, 22))]).unwrap();
    // The name moves to .5: .1 closes, .5 opens, each with the name it came from.
    store
        .record_scan(
            &scan("db", 200.0),
            &[
                ChangeRow {
                    hostname: Some("db.example.org".into()),
                    ..change("192.0.2.5", Proto::Tcp, 22, states::CLOSED, states::OPEN)
                },
                change("192.0.2.1", Proto::Tcp, 22, states::OPEN, states::CLOSED),
            ],
            &[named(open("192.0.2.5", Proto::Tcp, 22))],
        )
        .unwrap();
    let changes = store.changes(&all_changes()).unwrap().changes;
    let names: Vec<(IpAddr, Option<&str>)> =
        changes.iter().map(|change| (change.ip, change.hostname.as_deref())).collect();
    assert_eq!(names, [(ip("192.0.2.1"), None), (ip("192.0.2.5"), Some("db.example.org"))]);
    let endpoints = store.endpoints(&EndpointQuery { limit: 10, ..EndpointQuery::default() }).unwrap().endpoints;
    let names: Vec<(IpAddr, Option<&str>)> =
        endpoints.iter().map(|endpoint| (endpoint.ip, endpoint.hostname.as_deref())).collect();
    assert_eq!(names, [(ip("192.0.2.1"), None), (ip("192.0.2.5"), Some("db.example.org"))]);
}

#[test]
fn a_scan_writes_its_changes_and_its_endpoints_and_reads_back_newest_first() {
    let scratch = Scratch::new("scan");
    let opened = HistoryStore::open(&scratch.database()).unwrap();
    assert_eq!((opened.migrated_from, opened.set_aside.is_none()), (0, true));
    let mut store = opened.store;
    // The first scan has no changes, only opens: the inventory learns them.
    store.record_scan(&scan("web", 100.0), &[], &[open("192.0.2.1", Proto::Tcp, 22)]).unwrap();
    // Then 443 opens, 22 closes, udp/53 opens.
    store
        .record_scan(
            &scan("web", 200.0),
            &[
                change("192.0.2.1", Proto::Tcp, 443, states::CLOSED, states::OPEN),
                change("192.0.2.1", Proto::Tcp, 22, states::OPEN, states::FILTERED),
                change("2001:db8::1", Proto::Udp, 53, states::OPEN_FILTERED, states::OPEN),
            ],
            &[open("192.0.2.1", Proto::Tcp, 443), open("2001:db8::1", Proto::Udp, 53)],
        )
        .unwrap();
    // 22 opens again; 443 turns suspect (a SYN proxy arrived): neither opened nor closed.
    store
        .record_scan(
            &scan("web", 300.0),
            &[
                change("192.0.2.1", Proto::Tcp, 22, states::FILTERED, states::OPEN),
                ChangeRow {
                    reason: Some("synproxy".into()),
                    ..change("192.0.2.1", Proto::Tcp, 443, states::OPEN, states::SUSPECT)
                },
            ],
            &[
                open("192.0.2.1", Proto::Tcp, 22),
                OpenEndpoint {
                    state: states::SUSPECT,
                    reason: Some("synproxy".into()),
                    ..open("192.0.2.1", Proto::Tcp, 443)
                },
                open("2001:db8::1", Proto::Udp, 53),
            ],
        )
        .unwrap();
    let page = store.changes(&all_changes()).unwrap();
    let seen: Vec<(f64, u16, &str, &str, ChangeKind)> = page
        .changes
        .iter()
        .map(|change| (change.time, change.port, change.old_state.as_str(), change.new_state.as_str(), change.kind()))
        .collect();
    assert_eq!(
        seen,
        [
            (300.0, 443, "open", "suspect", ChangeKind::Other),
            (300.0, 22, "filtered", "open", ChangeKind::Opened),
            (200.0, 53, "open|filtered", "open", ChangeKind::Opened),
            (200.0, 22, "open", "filtered", ChangeKind::Closed),
            (200.0, 443, "closed", "open", ChangeKind::Opened),
        ]
    );
    assert_eq!(page.changes[0].reason.as_deref(), Some("synproxy"));
    assert_eq!(page.changes[2].ip, ip("2001:db8::1"));
    assert_eq!(page.changes[2].proto, Proto::Udp);
    assert_eq!(page.next_cursor, None);
    let endpoints = store.endpoints(&EndpointQuery { limit: 100, ..EndpointQuery::default() }).unwrap().endpoints;
    let summary: Vec<(IpAddr, u16, &str, f64, f64, f64, u64)> = endpoints
        .iter()
        .map(|e| (e.ip, e.port, e.state.as_str(), e.first_seen, e.last_seen_open, e.last_change, e.times_opened))
        .collect();
    // In address order: IPv4 (mapped) before 2001:db8::; ports in order.
    assert_eq!(
        summary,
        [
            (ip("192.0.2.1"), 22, "open", 100.0, 300.0, 300.0, 2),
            (ip("192.0.2.1"), 443, "suspect", 200.0, 300.0, 300.0, 1),
            (ip("2001:db8::1"), 53, "open", 200.0, 300.0, 200.0, 1),
        ]
    );
    // A failed scan sees nothing; then 53 closes: it was last seen open by the scan at 300.
    store.record_scan(&ScanRow { result: ScanOutcome::Failure, ..scan("web", 350.0) }, &[], &[]).unwrap();
    store
        .record_scan(
            &scan("web", 400.0),
            &[change("2001:db8::1", Proto::Udp, 53, states::OPEN, states::CLOSED)],
            &[open("192.0.2.1", Proto::Tcp, 22)],
        )
        .unwrap();
    let endpoints = store.endpoints(&EndpointQuery { limit: 100, ..EndpointQuery::default() }).unwrap().endpoints;
    let udp = endpoints.iter().find(|e| e.port == 53).unwrap();
    assert_eq!((udp.state.as_str(), udp.last_seen_open, udp.last_change), ("closed", 300.0, 400.0));
    let ssh = endpoints.iter().find(|e| e.port == 22).unwrap();
    assert_eq!(
        (ssh.last_seen_open, ssh.last_change, ssh.times_opened),
        (400.0, 300.0, 2),
        "open: seen by the last scan"
    );
    let open_only =
        store.endpoints(&EndpointQuery { state: Some("open".into()), limit: 100, ..EndpointQuery::default() }).unwrap();
    assert_eq!(open_only.endpoints.len(), 1, "22 is open; 53 closed, 443 is suspect");
    let first_seen_late = store
        .endpoints(&EndpointQuery { since_first_seen: Some(150.0), limit: 100, ..EndpointQuery::default() })
        .unwrap();
    assert_eq!(first_seen_late.endpoints.len(), 2);
}

#[test]
fn pages_follow_their_cursors_without_overlap_and_filters_combine() {
    let scratch = Scratch::new("pages");
    let mut store = HistoryStore::open(&scratch.database()).unwrap().store;
    for round in 0..10u16 {
        let changes: Vec<ChangeRow> = (0..25u16)
            .map(|port| {
                let (old, new) =
                    if round % 2 == 0 { (states::CLOSED, states::OPEN) } else { (states::OPEN, states::CLOSED) };
                change(&format!("192.0.2.{}", port % 5 + 1), Proto::Tcp, 1000 + port, old, new)
            })
            .collect();
        let target = if round < 5 { "a" } else { "b" };
        store.record_scan(&scan(target, 1000.0 + f64::from(round)), &changes, &[]).unwrap();
    }
    let mut cursor = None;
    let mut ids = Vec::new();
    loop {
        let page = store.changes(&ChangeQuery { limit: 40, before_id: cursor, ..ChangeQuery::default() }).unwrap();
        assert!(page.changes.len() <= 40);
        ids.extend(page.changes.iter().map(|change| change.id));
        match page.next_cursor {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    let mut sorted = ids.clone();
    sorted.sort_unstable_by(|a, b| b.cmp(a));
    sorted.dedup();
    assert_eq!((ids.len(), ids), (250, sorted), "every change once, newest first");
    let query = ChangeQuery {
        target: Some("a".into()),
        ip: Some(ip("192.0.2.3")),
        kind: Some(ChangeKind::Opened),
        since: Some(1001.0),
        until: Some(1004.0),
        limit: 100,
        ..ChangeQuery::default()
    };
    let page = store.changes(&query).unwrap();
    // Rounds 2 and 4 opened; .3 has ports 1002, 1007, ... (5 per round).
    assert_eq!(page.changes.len(), 10, "{page:?}");
    assert!(page.changes.iter().all(|c| c.target == "a" && c.ip == ip("192.0.2.3") && c.new_state == "open"));
    let one_port = ChangeQuery { port: Some((Some(Proto::Tcp), 1002)), limit: 100, ..ChangeQuery::default() };
    assert_eq!(store.changes(&one_port).unwrap().changes.len(), 10);
    let udp = ChangeQuery { port: Some((Some(Proto::Udp), 1002)), limit: 100, ..ChangeQuery::default() };
    assert!(store.changes(&udp).unwrap().changes.is_empty());
}

/// Endpoint pages, with and without a target and a state filter: every endpoint once, in key
/// order; a cursor of another target is refused.
#[test]
fn endpoint_pages_follow_their_cursors_with_and_without_filters() {
    let scratch = Scratch::new("endpoint-pages");
    let mut store = HistoryStore::open(&scratch.database()).unwrap().store;
    for target in ["a", "b"] {
        let opens: Vec<OpenEndpoint> = (0..60u16)
            .map(|n| {
                let endpoint = open(
                    &format!("192.0.2.{}", n % 20 + 1),
                    if n % 3 == 0 { Proto::Udp } else { Proto::Tcp },
                    1000 + n / 20,
                );
                OpenEndpoint { state: if n % 4 == 0 { states::SUSPECT } else { states::OPEN }, ..endpoint }
            })
            .collect();
        store.record_scan(&scan(target, 1.0), &[], &opens).unwrap();
    }
    let read_all = |query: EndpointQuery| {
        let mut all = Vec::new();
        let mut query = EndpointQuery { limit: 7, ..query };
        loop {
            let page = store.endpoints(&query).unwrap();
            assert!(page.endpoints.len() <= 7);
            all.extend(page.endpoints.iter().map(|endpoint| endpoint.cursor()));
            match page.next_cursor {
                Some(cursor) => query.after = Some(cursor),
                None => return all,
            }
        }
    };
    for (query, expected) in [
        (EndpointQuery::default(), 120),
        (EndpointQuery { target: Some("b".into()), ..EndpointQuery::default() }, 60),
        (EndpointQuery { target: Some("a".into()), state: Some(states::OPEN.into()), ..EndpointQuery::default() }, 45),
        (EndpointQuery { state: Some(states::SUSPECT.into()), ..EndpointQuery::default() }, 30),
    ] {
        let cursors = read_all(query.clone());
        let mut sorted = cursors.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(cursors.len(), expected, "{query:?}");
        assert_eq!(cursors.len(), sorted.len(), "no endpoint twice: {query:?}");
    }
    let of_a =
        store.endpoints(&EndpointQuery { target: Some("a".into()), limit: 1, ..EndpointQuery::default() }).unwrap();
    let foreign =
        EndpointQuery { target: Some("b".into()), after: of_a.next_cursor, limit: 5, ..EndpointQuery::default() };
    assert!(matches!(store.endpoints(&foreign), Err(synwatch_history::HistoryError::BadCursor(_))));
}

#[test]
fn hostile_strings_are_values_never_sql() {
    let scratch = Scratch::new("sql");
    let mut store = HistoryStore::open(&scratch.database()).unwrap().store;
    let evil = "x'; DROP TABLE changes; --";
    store
        .record_scan(&scan(evil, 10.0), &[change("192.0.2.9", Proto::Tcp, 80, states::CLOSED, states::OPEN)], &[])
        .unwrap();
    let found = store.changes(&ChangeQuery { target: Some(evil.into()), limit: 10, ..ChangeQuery::default() }).unwrap();
    assert_eq!(found.changes.len(), 1);
    assert_eq!(found.changes[0].target, evil);
    let none = store
        .changes(&ChangeQuery { target: Some("' OR '1'='1".into()), limit: 10, ..ChangeQuery::default() })
        .unwrap();
    assert!(none.changes.is_empty());
    let endpoints =
        store.endpoints(&EndpointQuery { target: Some(evil.into()), limit: 10, ..EndpointQuery::default() });
    assert_eq!(endpoints.unwrap().endpoints.len(), 1);
    assert!(
        store
            .endpoints(&EndpointQuery { after: Some("zz/not/a/cursor".into()), limit: 1, ..EndpointQuery::default() })
            .is_err()
    );
    assert_eq!(store.change_count().unwrap(), 1, "the table is still there");
}

#[test]
fn pruning_keeps_the_retention_and_the_cap_and_never_an_open_endpoint() {
    let scratch = Scratch::new("prune");
    let mut store = HistoryStore::open(&scratch.database()).unwrap().store;
    let day = 86_400.0;
    // Day 0: .1 opens and .2 opens; day 1: .2 closes; days 2..=11: ten changes of .3 each.
    store
        .record_scan(
            &scan("t", 0.0),
            &[
                change("192.0.2.1", Proto::Tcp, 22, states::CLOSED, states::OPEN),
                change("192.0.2.2", Proto::Tcp, 22, states::CLOSED, states::OPEN),
            ],
            &[open("192.0.2.1", Proto::Tcp, 22), open("192.0.2.2", Proto::Tcp, 22)],
        )
        .unwrap();
    store
        .record_scan(
            &scan("t", day),
            &[change("192.0.2.2", Proto::Tcp, 22, states::OPEN, states::CLOSED)],
            &[open("192.0.2.1", Proto::Tcp, 22)],
        )
        .unwrap();
    for day_number in 2..12 {
        let changes: Vec<ChangeRow> =
            (0..10).map(|port| change("192.0.2.3", Proto::Tcp, 100 + port, states::CLOSED, states::OPEN)).collect();
        store.record_scan(&scan("t", f64::from(day_number) * day), &changes, &[]).unwrap();
    }
    assert_eq!(store.change_count().unwrap(), 103);
    // A 5-day retention at day 12 keeps days 7..=11 (50 changes); a cap of 30 keeps the newest 30.
    let pruned = store.prune(12.0 * day, Duration::from_secs(5 * 86_400), 30).unwrap();
    assert_eq!((pruned.changes, pruned.scans), (73, 7), "{pruned:?}");
    let left = store.changes(&all_changes()).unwrap().changes;
    assert_eq!(left.len(), 30);
    assert!(left.iter().all(|change| change.time >= 9.0 * day), "the oldest go first");
    // .2 closed on day 1, past the retention: forgotten; .1 stays open: kept however old.
    let endpoints = store.endpoints(&EndpointQuery { limit: 100, ..EndpointQuery::default() }).unwrap().endpoints;
    assert!(endpoints.iter().any(|e| e.ip == ip("192.0.2.1") && e.first_seen == 0.0));
    assert!(!endpoints.iter().any(|e| e.ip == ip("192.0.2.2")));
    assert_eq!(pruned.endpoints, 1);
    assert!(store.size_bytes() > 0);
}

#[test]
fn garbage_foreign_and_future_files_are_set_aside_and_a_new_history_starts() {
    let scratch = Scratch::new("aside");
    let path = scratch.database();
    /// Writes one kind of file that is not a usable history.
    type MakeBadFile = Box<dyn Fn(&Path)>;
    let cases: Vec<(&str, MakeBadFile)> = vec![
        ("garbage", Box::new(|path: &Path| std::fs::write(path, vec![0x5a; 8192]).unwrap())),
        (
            "foreign",
            Box::new(|path: &Path| {
                let connection = rusqlite::Connection::open(path).unwrap();
                connection.execute_batch("CREATE TABLE notes (text TEXT); INSERT INTO notes VALUES ('mine');").unwrap();
            }),
        ),
        (
            "future",
            Box::new(|path: &Path| {
                let mut store = HistoryStore::open(path).unwrap().store;
                store.record_scan(&scan("t", 1.0), &[], &[]).unwrap();
                drop(store);
                let connection = rusqlite::Connection::open(path).unwrap();
                connection.execute("INSERT INTO schema_version VALUES (999, 0)", []).unwrap();
            }),
        ),
    ];
    for (name, make) in cases {
        let _ = std::fs::remove_file(&path);
        make(&path);
        let opened = HistoryStore::open(&path).unwrap_or_else(|error| panic!("{name}: {error}"));
        let (aside, reason) = opened.set_aside.unwrap_or_else(|| panic!("{name} was not set aside"));
        assert!(aside.exists() && aside.to_string_lossy().contains(".corrupt-"), "{name}: {aside:?}");
        eprintln!("{name}: {reason}");
        let mut store = opened.store;
        store
            .record_scan(&scan("t", 2.0), &[change("192.0.2.1", Proto::Tcp, 1, states::CLOSED, states::OPEN)], &[])
            .unwrap();
        assert_eq!(store.change_count().unwrap(), 1, "{name}");
        drop(store);
        let _ = std::fs::remove_file(&aside);
    }
    // A read-only reader refuses what is not ours, and a missing file, with the path.
    std::fs::write(scratch.0.join("other.sqlite"), b"").unwrap();
    let connection = rusqlite::Connection::open(scratch.0.join("other.sqlite")).unwrap();
    connection.execute_batch("CREATE TABLE t (x)").unwrap();
    let error = HistoryStore::open_read_only(&scratch.0.join("other.sqlite")).unwrap_err().to_string();
    assert!(error.contains("not a synwatch history database"), "{error}");
    let error = HistoryStore::open_read_only(&scratch.0.join("missing.sqlite")).unwrap_err().to_string();
    assert!(error.contains("missing.sqlite") && error.contains("no such file"), "{error}");
}

#[test]
fn every_schema_version_migrates_to_the_newest_keeping_its_rows() {
    let newest = MIGRATIONS.len() as u32;
    for from in 0..=newest {
        let scratch = Scratch::new(&format!("migrate-{from}"));
        let path = scratch.database();
        {
            let mut connection = rusqlite::Connection::open(&path).unwrap();
            assert_eq!(schema::migrate(&mut connection, from).unwrap(), 0);
            assert_eq!(schema::version(&connection).unwrap(), from);
            if from >= 1 {
                // A version-1 row: it must survive every later migration.
                connection
                    .execute(
                        "INSERT INTO scans (target, started, ended, result, open, closed, filtered, changes)
                         VALUES ('kept', 1, 2, 'success', 0, 0, 0, 0)",
                        [],
                    )
                    .unwrap();
            }
        }
        let opened = HistoryStore::open(&path).unwrap();
        assert_eq!((opened.migrated_from, opened.set_aside.is_none()), (from, true));
        drop(opened);
        let connection = rusqlite::Connection::open(&path).unwrap();
        assert_eq!(schema::version(&connection).unwrap(), newest);
        let kept: i64 =
            connection.query_row("SELECT COUNT(*) FROM scans WHERE target = 'kept'", [], |row| row.get(0)).unwrap();
        assert_eq!(kept, i64::from(from >= 1));
    }
}

#[test]
fn a_reader_beside_the_writer_sees_every_committed_scan() {
    let scratch = Scratch::new("reader");
    let mut writer = HistoryStore::open(&scratch.database()).unwrap().store;
    writer
        .record_scan(&scan("t", 1.0), &[change("192.0.2.1", Proto::Tcp, 1, states::CLOSED, states::OPEN)], &[])
        .unwrap();
    let reader = HistoryStore::open_read_only(&scratch.database()).unwrap();
    assert_eq!(reader.change_count().unwrap(), 1);
    writer
        .record_scan(&scan("t", 2.0), &[change("192.0.2.1", Proto::Tcp, 1, states::OPEN, states::CLOSED)], &[])
        .unwrap();
    assert_eq!(reader.change_count().unwrap(), 2);
    assert_eq!(reader.changes(&all_changes()).unwrap().changes[0].kind(), ChangeKind::Closed);
}

/// The child of the SIGKILL test: writes scans of 2,000 changes each until it is killed. It is
/// ignored in a normal run; the SIGKILL test starts it with `--ignored`.
#[test]
#[ignore = "the writer child of sigkill_during_heavy_writes_never_leaves_a_half_written_scan, started by it"]
fn sigkill_child_writer() {
    let path =
        std::env::var("SYNWATCH_HISTORY_CHILD_DB").expect("started by the SIGKILL test, which names the database");
    let mut store = HistoryStore::open(Path::new(&path)).unwrap().store;
    for round in 0.. {
        let changes: Vec<ChangeRow> = (0..2000u32)
            .map(|n| {
                let (old, new) =
                    if round % 2 == 0 { (states::CLOSED, states::OPEN) } else { (states::OPEN, states::CLOSED) };
                change(&format!("198.18.{}.{}", n / 250, n % 250 + 1), Proto::Tcp, 80, old, new)
            })
            .collect();
        store.record_scan(&scan("heavy", f64::from(round)), &changes, &[]).unwrap();
    }
}

/// SIGKILL at random moments of heavy writes: the database always opens, passes SQLite's
/// integrity check, and holds every scan whole (its row says how many changes it wrote, and
/// exactly those are there) or not at all.
#[test]
fn sigkill_during_heavy_writes_never_leaves_a_half_written_scan() {
    let scratch = Scratch::new("sigkill");
    let path = scratch.database();
    let mut seed = 0x2545_f491_4f6c_dd1du64 ^ u64::from(std::process::id());
    for kill in 0..8 {
        let mut child = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "sigkill_child_writer", "--ignored", "--nocapture", "--test-threads", "1"])
            .env("SYNWATCH_HISTORY_CHILD_DB", &path)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        std::thread::sleep(Duration::from_millis(150 + seed % 400));
        child.kill().unwrap();
        child.wait().unwrap();
        let opened = HistoryStore::open(&path).unwrap();
        assert!(opened.set_aside.is_none(), "kill {kill}: the database was set aside: {:?}", opened.set_aside);
        drop(opened);
        let connection = rusqlite::Connection::open(&path).unwrap();
        let check: String = connection.query_row("PRAGMA integrity_check", [], |row| row.get(0)).unwrap();
        assert_eq!(check, "ok", "kill {kill}");
        let torn: i64 = connection
            .query_row(
                "SELECT COUNT(*) FROM scans WHERE scans.changes != (SELECT COUNT(*) FROM changes WHERE changes.scan = scans.id)",
                [],
                |row| row.get(0),
            )
            .unwrap();
        let orphans: i64 = connection
            .query_row("SELECT COUNT(*) FROM changes WHERE scan NOT IN (SELECT id FROM scans)", [], |row| row.get(0))
            .unwrap();
        assert_eq!((torn, orphans), (0, 0), "kill {kill}");
    }
    let connection = rusqlite::Connection::open(&path).unwrap();
    let scans: i64 = connection.query_row("SELECT COUNT(*) FROM scans", [], |row| row.get(0)).unwrap();
    assert!(scans > 0, "the writer never committed a scan: the test proves nothing");
}

#[test]
fn times_are_durations_ago_or_rfc3339_instants() {
    let now = 1_800_000_000.0;
    assert_eq!(synwatch_history::parse_time("24h", now).unwrap(), now - 86_400.0);
    assert_eq!(synwatch_history::parse_time("90m", now).unwrap(), now - 5_400.0);
    assert_eq!(synwatch_history::parse_time("2026-12-01T00:00:00Z", now).unwrap(), 1_796_083_200.0);
    let error = synwatch_history::parse_time("yesterday", now).unwrap_err();
    assert!(error.contains("\"yesterday\"") && error.contains("RFC 3339"), "{error}");
}

/// The `change=` filter of the queries (SQL) and `Change::kind` (Rust) say the same of every
/// pair of states, and count as `/metrics` does: only trusted opens open or close.
#[test]
fn change_kinds_agree_between_the_query_filter_and_the_rows() {
    let scratch = Scratch::new("kinds");
    let mut store = HistoryStore::open(&scratch.database()).unwrap().store;
    let all = [
        states::OPEN,
        states::SUSPECT,
        states::UNVERIFIED,
        states::CLOSED,
        states::FILTERED,
        states::OPEN_FILTERED,
        states::NOT_SCANNED,
    ];
    let mut rows = Vec::new();
    for (first, old) in all.iter().enumerate() {
        for (second, new) in all.iter().enumerate() {
            if old != new {
                rows.push(change("192.0.2.1", Proto::Tcp, (first * 10 + second) as u16, old, new));
            }
        }
    }
    store.record_scan(&scan("t", 1.0), &rows, &[]).unwrap();
    let mut by_filter = std::collections::BTreeMap::new();
    for kind in [ChangeKind::Opened, ChangeKind::Closed, ChangeKind::Other] {
        for change in store.changes(&ChangeQuery { kind: Some(kind), ..all_changes() }).unwrap().changes {
            assert_eq!(change.kind(), kind, "{} -> {}", change.old_state, change.new_state);
            assert!(by_filter.insert(change.port, kind).is_none(), "port {} matched two filters", change.port);
        }
    }
    assert_eq!(by_filter.len(), rows.len(), "every change matches exactly one filter");
    assert_eq!(ChangeKind::of(states::CLOSED, states::OPEN), ChangeKind::Opened);
    assert_eq!(ChangeKind::of(states::SUSPECT, states::OPEN), ChangeKind::Other);
    assert_eq!(ChangeKind::of(states::OPEN, states::UNVERIFIED), ChangeKind::Other);
    assert_eq!(ChangeKind::of(states::OPEN, states::OPEN_FILTERED), ChangeKind::Closed);
    // Leaving the target's scans, or coming back, is neither (as `/metrics` counts neither).
    assert_eq!(ChangeKind::of(states::OPEN, states::NOT_SCANNED), ChangeKind::Other);
    assert_eq!(ChangeKind::of(states::NOT_SCANNED, states::OPEN), ChangeKind::Other);
}
