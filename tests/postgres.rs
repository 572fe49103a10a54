#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! The PostgreSQL store against a real PostgreSQL server (tests/common/postgres.rs): the store's
//! behaviour, replicas on one database (`tollgate serve --store postgresql://…`), spend charged
//! once across replicas, and a database that is down.

mod common;

use common::postgres::{shared, Postgres, Replica};
use common::*;
use serde_json::{json, Value};
use tollgate::records::{SpendBatch, SpendEvent};
use tollgate::sidecar::store::{KeyRow, PgOptions, SpendLogQuery, Store, UserRow};

const T0: i64 = 1_767_225_600_000_000; // 2026-01-01T00:00:00Z

fn event(id: &str, key: &str, user: &str, nanos: i64) -> SpendEvent {
    SpendEvent {
        event_id: id.into(),
        request_id: id.into(),
        api_key: Some(key.into()),
        user_id: Some(user.into()),
        end_user: Some("cust".into()),
        model: "gpt-4o".into(),
        model_id: "d1".into(),
        spend_nanos: nanos,
        total_tokens: 15,
        status: "success".into(),
        call_type: "acompletion".into(),
        start_time_micros: T0,
        end_time_micros: T0 + 1000,
        ..Default::default()
    }
}

fn config() -> String {
    format!(
        "model_list:\n  - model_name: gpt-4o\n    litellm_params:\n      model: openai/gpt-4o\n      api_base: http://127.0.0.1:9/v1\n      api_key: sk-x\ngeneral_settings:\n  master_key: {MASTER_KEY}\n  database_connection_timeout: 2\n"
    )
}

fn master() -> String {
    format!("Bearer {MASTER_KEY}")
}

fn internal() -> String {
    format!(
        "Bearer {}",
        tollgate::sidecar::render::internal_token(MASTER_KEY)
    )
}

/// Two stores opened at once on one new database (both migrate), the schema in `tollgate`
/// only; a batch applied by both counts once; change seqs are shared and ordered.
#[test]
fn the_store_on_postgres_counts_a_batch_once_and_shares_its_change_log() {
    let pg = shared();
    let url = pg.database("store");
    let opened: Vec<Store> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..2)
            .map(|_| s.spawn(|| Store::open_postgres(&url, &PgOptions::default())))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("open thread").expect("open the store"))
            .collect()
    });
    let (a, b) = (&opened[0], &opened[1]);
    assert_eq!(
        pg.psql(
            url.rsplit('/').next().unwrap(),
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'"
        ),
        "0",
        "nothing outside the tollgate schema"
    );
    a.insert_user_with_key(
        &UserRow {
            user_id: "u1".into(),
            ..Default::default()
        },
        Some(&KeyRow {
            token: "k1".into(),
            user_id: Some("u1".into()),
            ..Default::default()
        }),
    )
    .unwrap();
    assert!(b.key("k1").unwrap().is_some(), "b sees a's key");
    let batch = SpendBatch {
        events: (0..100)
            .map(|i| event(&format!("e{i}"), "k1", "u1", 1_000))
            .chain([event("e0", "k1", "u1", 1_000)])
            .collect(),
    };
    let first = a.apply_spend_batch(&batch, T0).unwrap();
    assert_eq!((first.applied, first.duplicates), (100, 1));
    let again = b.apply_spend_batch(&batch, T0).unwrap();
    assert_eq!((again.applied, again.duplicates), (0, 101));
    assert_eq!(b.key("k1").unwrap().unwrap().spend_nanos, 100_000);
    assert_eq!(b.user("u1").unwrap().unwrap().spend_nanos, 100_000);
    assert_eq!(a.proxy_budget_at(T0).unwrap().spend_nanos, 100_000);
    assert_eq!(
        a.end_user_at("cust", T0).unwrap().unwrap().spend_nanos,
        100_000
    );
    assert_eq!(b.spend_logs(&SpendLogQuery::default()).unwrap().len(), 100);

    let before = b.changes_since(None).unwrap().seq;
    a.transact(T0, |tx| {
        tx.invalidate("x");
        anyhow::Ok(())
    })
    .unwrap();
    b.transact(T0, |tx| {
        tx.invalidate_all(["y".to_string(), "z".to_string()]);
        anyhow::Ok(())
    })
    .unwrap();
    let seen = a.changes_since(Some(before)).unwrap();
    assert_eq!(seen.seq, before + 3);
    assert_eq!(seen.entries, vec!["x", "y", "z"]);
}

fn post(url: &str, auth: &str, body: &str) -> (u16, Value) {
    let r = agent()
        .post(url)
        .set("authorization", auth)
        .set("content-type", "application/json")
        .send_string(body);
    let resp = match r {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("POST {url}: {e}"),
    };
    let status = resp.status();
    let text = resp.into_string().unwrap_or_default();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

fn get(url: &str, auth: &str) -> (u16, Value) {
    let resp = match agent().get(url).set("authorization", auth).call() {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("GET {url}: {e}"),
    };
    let status = resp.status();
    let text = resp.into_string().unwrap_or_default();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// Two `tollgate serve` replicas on one database: a key made on A is known to B, a change made
/// on B is in A's change log, and the same spend batch posted to both at once, 100 times, is
/// charged once.
#[test]
fn two_replicas_share_keys_changes_and_charge_each_event_once() {
    let pg = shared();
    let url = pg.database("replicas");
    let scratch = TempDir::new("pg-replicas");
    let a = Replica::start(&config(), &url, scratch.path());
    let b = Replica::start(&config(), &url, scratch.path());

    let (status, generated) = post(
        &a.url("/key/generate"),
        &master(),
        &json!({"key_alias": "shared"}).to_string(),
    );
    assert_eq!(status, 200, "{generated}");
    let key = generated["key"].as_str().expect("key").to_string();
    let token = sha256_hex(&key);
    let (status, info) = get(&b.url(&format!("/key/info?key={key}")), &master());
    assert_eq!(status, 200, "{info}");
    assert_eq!(info["info"]["key_alias"], "shared");
    let (status, looked_up) = get(
        &b.url(&format!("/tollgate/internal/v1/keys/{token}")),
        &internal(),
    );
    assert_eq!(status, 200, "B's filter lookup finds A's key: {looked_up}");

    let (_, since) = get(&a.url("/tollgate/internal/v1/changes"), &internal());
    let since = since["seq"].as_i64().expect("seq");
    let (status, blocked) = post(
        &b.url("/key/block"),
        &master(),
        &json!({"key": key}).to_string(),
    );
    assert_eq!(status, 200, "{blocked}");
    let (_, changes) = get(
        &a.url(&format!("/tollgate/internal/v1/changes?since={since}")),
        &internal(),
    );
    assert!(
        changes["entries"]
            .as_array()
            .is_some_and(|e| e.iter().any(|x| x == token.as_str())),
        "A lists B's block: {changes}"
    );

    let nanos = 1_234;
    for round in 0..100 {
        let batch = SpendBatch {
            events: (0..3)
                .map(|i| event(&format!("tg-r{round}-{i}"), &token, "nobody", nanos))
                .collect(),
        };
        let body = serde_json::to_string(&batch).unwrap();
        let answers: Vec<(u16, Value)> = std::thread::scope(|s| {
            let hs: Vec<_> = [&a, &b]
                .iter()
                .map(|r| {
                    let u = r.url("/tollgate/internal/v1/spend");
                    let body = body.clone();
                    s.spawn(move || post(&u, &internal(), &body))
                })
                .collect();
            hs.into_iter().map(|h| h.join().expect("poster")).collect()
        });
        for (status, body) in &answers {
            assert_eq!(*status, 200, "round {round}: {body}");
        }
        let applied: u64 = answers
            .iter()
            .map(|(_, v)| v["applied"].as_u64().unwrap_or(0))
            .sum();
        assert_eq!(applied, 3, "round {round}: {answers:?}");
    }
    let db = url.rsplit('/').next().unwrap();
    assert_eq!(
        pg.psql(
            db,
            "SELECT count(*) || ' ' || count(DISTINCT event_id) FROM tollgate.spend_logs"
        ),
        "300 300"
    );
    let (_, info) = get(&a.url(&format!("/key/info?key={key}")), &master());
    let spend = info["info"]["spend"].as_f64().expect("spend");
    assert!(
        (spend - 300.0 * nanos as f64 / 1e9).abs() < 1e-12,
        "charged once: {spend}"
    );
}

/// A database that is down: the sidecar answers 503 in LiteLLM's envelope, and serves again
/// once the database is back.
#[test]
fn a_database_that_is_down_answers_503_and_recovers() {
    let pg = Postgres::start();
    let url = pg.database("down");
    let scratch = TempDir::new("pg-down");
    let a = Replica::start(&config(), &url, scratch.path());
    let (status, generated) = post(&a.url("/key/generate"), &master(), "{}");
    assert_eq!(status, 200, "{generated}");
    let key = generated["key"].as_str().expect("key").to_string();

    pg.stop_immediate();
    let (status, body) = get(&a.url(&format!("/key/info?key={key}")), &master());
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "503", "{body}");
    assert!(body["error"]["message"].is_string(), "{body}");
    let (status, body) = post(
        &a.url("/tollgate/internal/v1/spend"),
        &internal(),
        "{\"events\":[]}",
    );
    assert_eq!(status, 503, "{body}");

    pg.start_again();
    poll_until(
        "the sidecar serves again",
        std::time::Duration::from_secs(30),
        || match get(&a.url(&format!("/key/info?key={key}")), &master()) {
            (200, _) => Ok(()),
            (s, b) => Err(format!("{s}: {b}")),
        },
    );
}
