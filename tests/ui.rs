//! The admin UI in a real browser (issue 19): headless Chromium driven over WebDriver
//! (chromedriver), against a real stack (Envoy + filter + sidecar + fake upstream).
//!
//! Needs Debian's `chromium` and `chromium-driver` (`./build.sh test` installs them); set
//! `CHROMIUM_BIN` / `CHROMEDRIVER_BIN` to use others. Missing, the tests fail (not skip).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use base64::Engine;
use common::{free_port, poll_until, Stack, TempDir, MASTER_KEY};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";
/// How long the browser may take to show something (a cold Chromium on a loaded machine).
const WAIT: Duration = Duration::from_secs(30);

fn tool(env: &str, default: &str, package: &str) -> PathBuf {
    let path = PathBuf::from(std::env::var(env).unwrap_or_else(|_| default.to_string()));
    assert!(
        path.is_file(),
        "{} not found: install Debian's `{package}` (./build.sh test does) or set {env}",
        path.display()
    );
    path
}

/// A chromedriver process and one headless Chromium session; both end on drop.
struct Browser {
    driver: Child,
    base: String,
    session: String,
    agent: ureq::Agent,
    _profile: TempDir,
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self
            .agent
            .delete(&format!("{}/session/{}", self.base, self.session))
            .call();
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

impl Browser {
    fn start() -> Browser {
        let chromium = tool("CHROMIUM_BIN", "/usr/bin/chromium", "chromium");
        let chromedriver = tool(
            "CHROMEDRIVER_BIN",
            "/usr/bin/chromedriver",
            "chromium-driver",
        );
        let port = free_port();
        let driver = Command::new(&chromedriver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", chromedriver.display()));
        let base = format!("http://127.0.0.1:{port}");
        let agent = ureq::AgentBuilder::new()
            .timeout(Duration::from_secs(60))
            .build();
        let mut browser = Browser {
            driver,
            base,
            session: String::new(),
            agent,
            _profile: TempDir::new("chromium"),
        };
        poll_until("chromedriver ready", WAIT, || {
            browser
                .agent
                .get(&format!("{}/status", browser.base))
                .call()
                .map_err(|e| e.to_string())
                .and_then(|r| r.into_json::<Value>().map_err(|e| e.to_string()))
                .and_then(|v| {
                    if v["value"]["ready"] == true {
                        Ok(())
                    } else {
                        Err(v.to_string())
                    }
                })
        });
        let profile = browser._profile.path().display().to_string();
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:loggingPrefs": {"browser": "ALL"},
            "goog:chromeOptions": {
                "binary": chromium,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", "--window-size=1400,1000",
                         format!("--user-data-dir={profile}")],
            },
        }}});
        let v = browser.call("POST", "/session", Some(caps));
        browser.session = v["sessionId"].as_str().expect("session id").to_string();
        browser
    }

    /// One WebDriver command; an error answer fails the test. Returns `value`.
    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        match self.try_call(method, path, body) {
            Ok(v) => v,
            Err(e) => panic!("WebDriver {method} {path}: {e}"),
        }
    }

    fn try_call(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, String> {
        let url = if path == "/session" {
            format!("{}{path}", self.base)
        } else {
            format!("{}/session/{}{path}", self.base, self.session)
        };
        let req = self.agent.request(method, &url);
        let res = match body {
            Some(b) => req.send_json(b),
            None if method == "POST" => req.send_json(json!({})),
            None => req.call(),
        };
        match res {
            Ok(r) => Ok(r.into_json::<Value>().map_err(|e| e.to_string())?["value"].clone()),
            Err(ureq::Error::Status(code, r)) => {
                Err(format!("{code} {}", r.into_string().unwrap_or_default()))
            }
            Err(e) => Err(e.to_string()),
        }
    }

    fn goto(&self, url: &str) {
        self.call("POST", "/url", Some(json!({"url": url})));
    }

    fn run(&self, script: &str) -> Value {
        self.call(
            "POST",
            "/execute/sync",
            Some(json!({"script": script, "args": []})),
        )
    }

    /// The element `css` selects, waiting for it to appear.
    fn find(&self, css: &str) -> String {
        poll_until(&format!("element {css}"), WAIT, || {
            self.try_call(
                "POST",
                "/element",
                Some(json!({"using": "css selector", "value": css})),
            )
            .map(|v| v[ELEMENT].as_str().unwrap_or_default().to_string())
        })
    }

    fn click(&self, css: &str) {
        let id = self.find(css);
        self.call("POST", &format!("/element/{id}/click"), None);
    }

    fn type_into(&self, css: &str, text: &str) {
        let id = self.find(css);
        self.call("POST", &format!("/element/{id}/clear"), None);
        self.call(
            "POST",
            &format!("/element/{id}/value"),
            Some(json!({ "text": text })),
        );
    }

    /// The element's text (found again if a redraw replaced it meanwhile).
    fn text(&self, css: &str) -> String {
        poll_until(&format!("text of {css}"), WAIT, || {
            let id = self.find(css);
            self.try_call("GET", &format!("/element/{id}/text"), None)
                .map(|v| v.as_str().unwrap_or_default().to_string())
        })
    }

    /// Waits until the page `name` has been drawn (after a sign-in, reload or navigation).
    fn wait_page(&self, name: &str) {
        poll_until(&format!("page {name} drawn"), WAIT, || {
            let v = self.run("return document.getElementById('page').dataset.loaded || ''");
            if v == name {
                Ok(())
            } else {
                Err(v.to_string())
            }
        });
    }

    fn show(&self, page: &str) {
        self.run(&format!(
            "delete document.getElementById('page').dataset.loaded; location.hash = '#{page}'"
        ));
        self.wait_page(page);
    }

    fn reload(&self) {
        self.call("POST", "/refresh", None);
    }

    fn sign_in(&self, stack: &Stack, key: &str) {
        self.goto(&stack.url("/ui"));
        self.type_into("#signin-key", key);
        self.click("#signin-button");
        self.wait_page("keys");
    }

    /// The open alert's text, if one is open (an `alert(1)` that ran would be).
    fn alert(&self) -> Option<String> {
        self.try_call("GET", "/alert/text", None)
            .ok()
            .map(|v| v.to_string())
    }

    fn screenshot(&self, name: &str) -> PathBuf {
        let b64 = self.call("GET", "/screenshot", None);
        let png = base64::engine::general_purpose::STANDARD
            .decode(b64.as_str().expect("screenshot is base64"))
            .expect("screenshot decodes");
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("target")
            .join(name);
        std::fs::write(&path, png).expect("write screenshot");
        path
    }
}

/// Creates a key in the UI's form; returns the raw key the page shows once.
fn create_key_in_ui(browser: &Browser, alias: &str, budget: &str) -> String {
    browser.type_into("#new-key-alias", alias);
    browser.type_into("#new-key-budget", budget);
    browser.click("#new-key-budget-duration option[value='30d']");
    browser.click("#key-create-submit");
    let raw = poll_until("the new key shown", WAIT, || {
        let t = browser.run(
            "const c = document.getElementById('new-key-value'); return c ? c.textContent : ''",
        );
        match t.as_str() {
            Some(s) if s.starts_with("sk-") => Ok(s.to_string()),
            _ => Err(t.to_string()),
        }
    });
    browser.wait_page("keys");
    raw
}

/// The keys table row whose alias cell reads `alias` (waiting for it): its cells' texts.
fn key_row(browser: &Browser, alias: &str) -> Vec<String> {
    let script = format!(
        "for (const tr of document.querySelectorAll('#keys-table tbody tr')) {{
           const a = tr.querySelector('td.alias');
           if (a && a.textContent === {alias}) return [...tr.cells].map(c => c.textContent);
         }}
         return null;",
        alias = json!(alias)
    );
    poll_until(&format!("a keys row for {alias}"), WAIT, || {
        let v = browser.run(&script);
        serde_json::from_value(v.clone()).map_err(|_| v.to_string())
    })
}

/// The spend chart's total (the sum of what its bars show) and its number of bars.
fn chart(browser: &Browser) -> (f64, u64) {
    browser.find("#spend-chart");
    let v = browser.run(
        "const s = document.getElementById('spend-chart');
         return [Number(s.dataset.total), s.querySelectorAll('rect.bar').length];",
    );
    (v[0].as_f64().unwrap(), v[1].as_u64().unwrap())
}

#[test]
fn sign_in_create_a_key_and_see_its_spend() {
    let stack = Stack::default_config();
    // Served through Envoy with the policy that forbids inline and foreign script.
    let page = stack.get("/ui", None);
    page.assert_status(200);
    let csp = page.header("content-security-policy").unwrap_or_default();
    assert!(csp.contains("default-src 'self'"), "{csp}");
    assert!(csp.contains("script-src 'self';"), "{csp}");
    let browser = Browser::start();

    // A wrong key does not get in.
    browser.goto(&stack.url("/ui"));
    browser.type_into("#signin-key", "sk-not-a-key");
    browser.click("#signin-button");
    poll_until("sign-in refused", WAIT, || {
        let t = browser.text("#signin-error");
        if t.contains("401") {
            Ok(())
        } else {
            Err(t)
        }
    });

    browser.sign_in(&stack, MASTER_KEY);
    let raw = create_key_in_ui(&browser, "ui-budget-key", "2.5");
    let info = stack.key_info(&raw);
    assert_eq!(info["key_alias"], "ui-budget-key");
    assert_eq!(info["max_budget"], 2.5);
    assert_eq!(info["budget_duration"], "30d");
    let row = key_row(&browser, "ui-budget-key");
    assert_eq!(row[5], "$0", "{row:?}");
    assert_eq!(row[6], "$2.5", "{row:?}");
    assert_ne!(row[7], "—", "a reset time: {row:?}");

    browser.show("spend");
    assert_eq!(chart(&browser), (0.0, 0), "no spend yet");

    // gpt-4o has a price in LiteLLM's cost map (the default config prices nothing itself).
    for _ in 0..3 {
        stack.chat(Some(&raw), "gpt-4o").assert_status(200);
    }
    let logs = stack.wait_spend_logs(&raw, 3);
    let spent: f64 = logs.iter().map(|r| r["spend"].as_f64().unwrap()).sum();
    assert!(spent > 0.0);

    // After a reload (the key stays in the tab's session storage) the spend is there.
    browser.reload();
    browser.wait_page("spend");
    let (total, bars) = chart(&browser);
    assert!(
        (total - spent).abs() < 1e-9,
        "chart total {total}, spent {spent}"
    );
    assert_eq!(bars, 1, "one model, one day");
    let calls = browser.run(
        "return [...document.querySelectorAll('#calls-table tbody tr td.alias')].map(c => c.textContent)",
    );
    assert_eq!(
        calls,
        json!(["ui-budget-key", "ui-budget-key", "ui-budget-key"])
    );
    browser.click("#chart-group option[value='key']");
    poll_until("legend by key", WAIT, || {
        let t = browser.text("#chart-legend");
        if t.contains("ui-budget-key") {
            Ok(())
        } else {
            Err(t)
        }
    });
    let spend_png = browser.screenshot("ui-screenshot.png");

    browser.show("keys");
    let row = key_row(&browser, "ui-budget-key");
    assert_ne!(row[5], "$0", "spend shown: {row:?}");
    let meter = browser.run(
        "const m = [...document.querySelectorAll('#keys-table tbody tr')]
           .find(tr => tr.querySelector('td.alias').textContent === 'ui-budget-key')
           .querySelector('meter');
         return [m.value, m.max];",
    );
    assert_eq!(meter[1], 2.5);
    assert!((meter[0].as_f64().unwrap() - spent).abs() < 1e-9, "{meter}");
    browser.screenshot("ui-screenshot-keys.png");

    // Block from the UI: the next call through Envoy is refused.
    browser.click("#keys-table tr[data-token] button.block");
    poll_until("blocked", WAIT, || {
        let row = key_row(&browser, "ui-budget-key");
        if row[11] == "blocked" {
            Ok(())
        } else {
            Err(format!("{row:?}"))
        }
    });
    stack
        .chat(Some(&raw), "gpt-4o")
        .assert_error(401, "auth_error");
    // The page never needed anything the policy forbids.
    let console = browser.call("POST", "/se/log", Some(json!({"type": "browser"})));
    assert!(
        !console.to_string().contains("Content Security Policy"),
        "{console}"
    );
    eprintln!("screenshot: {}", spend_png.display());
}

#[test]
fn a_key_alias_is_shown_as_text() {
    let stack = Stack::default_config();
    let browser = Browser::start();
    browser.sign_in(&stack, MASTER_KEY);
    let alias = "<img src=x onerror=alert(1)>";
    let raw = create_key_in_ui(&browser, alias, "1");
    assert_eq!(stack.key_info(&raw)["key_alias"], alias);
    stack.chat(Some(&raw), "gpt-4o-mini").assert_status(200);
    stack.wait_spend_logs(&raw, 1);

    browser.reload();
    browser.wait_page("keys");
    assert_eq!(key_row(&browser, alias)[0], alias);
    browser.show("spend");
    browser.click("#chart-group option[value='key']");
    poll_until("legend by key", WAIT, || {
        let t = browser.text("#chart-legend");
        if t.contains(alias) {
            Ok(())
        } else {
            Err(t)
        }
    });
    assert!(browser.text("#calls-table").contains(alias));
    // Had the alias been parsed as markup, an <img> would exist and its onerror have run.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(browser.alert(), None, "an alert is open");
    assert_eq!(
        browser.run("return document.querySelectorAll('img').length"),
        0
    );
}

#[test]
fn search_filters_and_an_internal_user_sees_only_its_own() {
    let stack = Stack::default_config();
    stack.generate_key(json!({"key_alias": "someone-elses-key"}));
    let alice = stack.admin_post(
        "/user/new",
        &json!({"user_id": "alice", "key_alias": "alice-key"}),
    );
    alice.assert_status(200);
    let alice_key = alice.json()["key"].as_str().unwrap().to_string();

    let browser = Browser::start();
    browser.sign_in(&stack, MASTER_KEY);
    key_row(&browser, "someone-elses-key");
    key_row(&browser, "alice-key");
    let visible = "return [...document.querySelectorAll('#keys-table tbody tr')]
                     .filter(tr => !tr.hidden).map(tr => tr.cells[0].textContent)";
    browser.type_into("#key-search", "SOMEONE");
    assert_eq!(browser.run(visible), json!(["someone-elses-key"]));

    browser.click("#signout");
    browser.sign_in(&stack, &alice_key);
    key_row(&browser, "alice-key");
    browser.type_into("#key-search", "");
    assert_eq!(browser.run(visible), json!(["alice-key"]));
    // The admin-only list is refused by the API, and the page says so.
    browser.show("users");
    assert!(
        browser.text("#page").contains("401"),
        "{}",
        browser.text("#page")
    );
}
