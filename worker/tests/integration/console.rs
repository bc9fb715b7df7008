//! The operator's console (SPEC §11.4) in a real browser: headless
//! Chromium driven over WebDriver (Debian's `chromium` and
//! `chromium-driver`, which `.ci/run` installs), against a running worker,
//! the local RabbitMQ and the simulator over HTTP. An operator signs in,
//! finds an employee's events, approves a held plan (the links change in
//! the simulator), retries a failed action and downloads the audit trail;
//! a change without the CSRF token, or from another origin, is refused.
//!
//! A screenshot of each page is written to `target/console-screenshots/`,
//! and to `docs/console/` (the README shows them) when
//! `PALWORKER_UPDATE_SCREENSHOTS=1`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use palworker::local::identities::{credential, employee, object, principals, tenant};
use palworker::local::{
    ADMIN_TOKEN, Harness, HarnessOptions, events, free_port, wait_until, wait_until_async,
};
use palworker_sim::{FaultProfile, Faults};

const SETTLE: Duration = Duration::from_secs(60);
const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// chromedriver on a free loopback port, in a process group of its own:
/// dropping it kills the group — chromedriver and every browser it started.
struct ChromeDriver {
    child: Child,
    port: u16,
}

impl ChromeDriver {
    async fn start() -> ChromeDriver {
        for program in [CHROMIUM, CHROMEDRIVER] {
            assert!(
                Path::new(program).exists(),
                "{program} is missing: the console's browser tests need Debian's `chromium` and \
                 `chromium-driver` packages. Run `.ci/run` (it installs them when missing) or \
                 `apt-get install -y chromium chromium-driver`."
            );
        }
        let port = free_port().unwrap();
        let child = {
            use std::os::unix::process::CommandExt;
            Command::new(CHROMEDRIVER)
                .arg(format!("--port={port}"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .process_group(0)
                .spawn()
                .expect("starting chromedriver")
        };
        let driver = ChromeDriver { child, port };
        let http = reqwest::Client::new();
        wait_until_async(SETTLE, "chromedriver answers", async || {
            Ok(http
                .get(format!("http://127.0.0.1:{port}/status"))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success()))
        })
        .await
        .unwrap();
        driver
    }

    /// A headless browser session whose downloads go to `downloads`.
    async fn browser(&self, downloads: &Path) -> Client {
        let mut capabilities = serde_json::Map::new();
        capabilities.insert(
            "goog:chromeOptions".into(),
            serde_json::json!({
                "binary": CHROMIUM,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                         "--window-size=1280,1400", "--hide-scrollbars", "--force-device-scale-factor=1"],
                "prefs": {
                    "download.default_directory": downloads.display().to_string(),
                    "download.prompt_for_download": false,
                },
            }),
        );
        ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(capabilities)
            .connect(&format!("http://127.0.0.1:{}", self.port))
            .await
            .expect("a Chromium session")
    }
}

impl Drop for ChromeDriver {
    fn drop(&mut self) {
        if let Some(group) = rustix::process::Pid::from_raw(self.child.id() as i32) {
            let _ = rustix::process::kill_process_group(group, rustix::process::Signal::KILL);
        }
        let _ = self.child.wait();
    }
}

/// Where this run's screenshots go.
fn screenshot_dirs() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut dirs = vec![root.join("target/console-screenshots")];
    if std::env::var_os("PALWORKER_UPDATE_SCREENSHOTS").is_some_and(|v| v == "1") {
        dirs.push(root.join("docs/console"));
    }
    dirs
}

async fn screenshot(browser: &Client, name: &str) {
    let png = browser.screenshot().await.expect("a screenshot");
    assert!(png.starts_with(b"\x89PNG"), "a PNG");
    for dir in screenshot_dirs() {
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("{name}.png")), &png).unwrap();
    }
}

/// The page's text.
async fn text(browser: &Client) -> String {
    browser
        .find(Locator::Css("body"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// Clicks the button labelled `label` and waits for the next page's
/// notice (what the change did).
async fn click_button(browser: &Client, label: &str) -> String {
    let xpath = format!("//button[normalize-space()='{label}']");
    browser
        .find(Locator::XPath(&xpath))
        .await
        .unwrap_or_else(|e| panic!("no button `{label}`: {e}"))
        .click()
        .await
        .unwrap();
    browser
        .wait()
        .at_most(SETTLE)
        .for_element(Locator::Css("p.notice, p.error"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

async fn sign_in(browser: &Client, base: &str) {
    browser.goto(&format!("{base}/")).await.unwrap();
    assert!(
        browser.current_url().await.unwrap().path() == "/sign-in",
        "a page asks for a sign-in first"
    );
    browser
        .find(Locator::Id("token"))
        .await
        .unwrap()
        .send_keys(ADMIN_TOKEN)
        .await
        .unwrap();
    browser
        .find(Locator::XPath("//button[normalize-space()='Sign in']"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    browser
        .wait()
        .at_most(SETTLE)
        .for_element(Locator::Css("section[aria-labelledby='work']"))
        .await
        .unwrap();
}

/// E-0 fails in tenant 0 (every request answered 503), E-1 and E-2 are
/// linked in tenant 1, and a partner ID change over tenant 1 is held.
async fn scene() -> Harness {
    let mut faults = Faults::default();
    faults.per_tenant.insert(
        tenant(0),
        FaultProfile {
            rate_5xx: 1.0,
            ..FaultProfile::default()
        },
    );
    let mut h = Harness::start(HarnessOptions {
        principals: principals(3, 2),
        faults,
        name: "palworker-test-console".into(),
        extra_toml: "[limits]\nmax_actions_per_event = 1\n[retry]\nmax_elapsed = \"1s\"\ninitial_interval = \"100ms\"\n".into(),
        ..HarnessOptions::default()
    })
    .await
    .unwrap();
    h.publish(&events::assignment_started(
        "start-0",
        &employee(0),
        &tenant(0),
        &object(0, 0),
        "111111",
        Some(&credential(0)),
        None,
    ))
    .await
    .unwrap();
    for e in [1, 2] {
        h.publish(&events::assignment_started(
            &format!("start-{e}"),
            &employee(e),
            &tenant(1),
            &object(e, 1),
            "111111",
            Some(&credential(e)),
            None,
        ))
        .await
        .unwrap();
    }
    // A person's own account, which palworker cannot change.
    h.publish(&events::assignment_started(
        "start-manual",
        &employee(1),
        &tenant(0),
        &object(1, 0),
        "111111",
        None,
        None,
    ))
    .await
    .unwrap();
    h.wait_until_settled(SETTLE).await.unwrap();
    let tenant_1 = tenant(1);
    h.publish(&events::partner_id_changed(
        "big-change",
        "111111",
        "222222",
        Some(&[tenant_1.as_str()]),
    ))
    .await
    .unwrap();
    h.wait_until_settled(SETTLE).await.unwrap();
    assert_eq!(h.app().ledger.held_plan_count(), 1);
    h
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_signs_in_finds_approves_retries_and_downloads_the_audit_in_a_browser() {
    let h = scene().await;
    let base = format!("http://{}", h.app().http_addr);
    let driver = ChromeDriver::start().await;
    let downloads = tempfile::tempdir().unwrap();
    let browser = driver.browser(downloads.path()).await;

    // Sign in.
    browser.goto(&format!("{base}/")).await.unwrap();
    screenshot(&browser, "sign-in").await;
    sign_in(&browser, &base).await;
    let overview = text(&browser).await;
    let who = browser
        .find(Locator::Css(".who strong"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(who, "admin", "the token's name");
    assert!(overview.contains("actions failed"), "{overview}");
    screenshot(&browser, "overview").await;

    // Find an employee's events.
    browser.goto(&format!("{base}/events")).await.unwrap();
    browser
        .find(Locator::Id("find"))
        .await
        .unwrap()
        .send_keys(&employee(2))
        .await
        .unwrap();
    browser
        .find(Locator::XPath("//button[normalize-space()='Find']"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    browser
        .wait()
        .at_most(SETTLE)
        .for_element(Locator::Css("#accounts"))
        .await
        .unwrap();
    let found = text(&browser).await;
    assert!(
        found.contains("Accounts of E-2")
            && found.contains("start-2")
            && !found.contains("start-1"),
        "{found}"
    );
    screenshot(&browser, "events").await;

    // Approve the held plan, after reading it.
    browser.goto(&format!("{base}/held")).await.unwrap();
    assert!(text(&browser).await.contains("big-change"));
    screenshot(&browser, "held").await;
    browser
        .find(Locator::LinkText("big-change"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    browser
        .wait()
        .at_most(SETTLE)
        .for_element(Locator::Css("#plan"))
        .await
        .unwrap();
    let notice = click_button(&browser, "Approve 2 actions").await;
    assert!(notice.contains("2 actions released"), "{notice}");
    wait_until(
        SETTLE,
        "the approved plan's links are changed in the simulator",
        || {
            h.linked(1, 1).as_deref() == Some("222222")
                && h.linked(2, 1).as_deref() == Some("222222")
        },
        || format!("E-1: {:?}, E-2: {:?}", h.linked(1, 1), h.linked(2, 1)),
    )
    .await
    .unwrap();
    browser.refresh().await.unwrap();
    screenshot(&browser, "event").await;

    // Retry the failed action once the outage is over.
    h.simulator.set_faults(Faults::default());
    browser.goto(&format!("{base}/failed")).await.unwrap();
    assert!(text(&browser).await.contains("start-0"));
    screenshot(&browser, "failed").await;
    let notice = click_button(&browser, "Retry").await;
    assert!(notice.contains("queued again"), "{notice}");
    wait_until(
        SETTLE,
        "the retried action linked E-0 in tenant 0",
        || h.linked(0, 0).as_deref() == Some("111111"),
        || format!("E-0: {:?}", h.linked(0, 0)),
    )
    .await
    .unwrap();

    // What a person must do for the manual account.
    browser.goto(&format!("{base}/manual")).await.unwrap();
    let manual = text(&browser).await;
    assert!(
        manual.contains("az managementpartner create --partner-id 111111")
            && manual.contains("E-1"),
        "{manual}"
    );
    screenshot(&browser, "manual").await;

    // Download the audit trail.
    browser.goto(&format!("{base}/audit")).await.unwrap();
    screenshot(&browser, "audit").await;
    browser
        .find(Locator::XPath(
            "//button[normalize-space()='Download JSON Lines']",
        ))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let file = downloads.path().join("palworker-audit.jsonl");
    wait_until(
        SETTLE,
        "the browser saved the audit trail",
        || file.exists(),
        || {
            format!(
                "{:?}",
                std::fs::read_dir(downloads.path()).map(|d| d.count())
            )
        },
    )
    .await
    .unwrap();
    let audit: Vec<serde_json::Value> = std::fs::read_to_string(&file)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    let by = |kind: &str| {
        audit
            .iter()
            .find(|r| r["kind"] == kind)
            .map(|r| r["who"].clone())
    };
    assert_eq!(by("approval"), Some("admin".into()), "{audit:?}");
    assert_eq!(by("retry"), Some("admin".into()));

    // The overview on a phone.
    browser.set_window_size(390, 844).await.unwrap();
    browser.goto(&format!("{base}/")).await.unwrap();
    screenshot(&browser, "overview-phone").await;

    browser.close().await.unwrap();
    drop(driver);
    h.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_without_the_csrf_token_or_from_another_origin_is_refused() {
    let h = scene().await;
    let base = format!("http://{}", h.app().http_addr);
    let writes = || {
        h.simulator
            .requests()
            .iter()
            .filter(|r| r.method != "GET")
            .count()
    };
    let before = writes();
    let driver = ChromeDriver::start().await;
    let downloads = tempfile::tempdir().unwrap();
    let browser = driver.browser(downloads.path()).await;
    sign_in(&browser, &base).await;

    // In the browser: the approve form, its CSRF field taken out, submitted.
    browser.goto(&format!("{base}/held")).await.unwrap();
    browser
        .execute(
            "document.querySelectorAll('input[name=csrf]').forEach(function (field) { field.remove(); });",
            vec![],
        )
        .await
        .unwrap();
    let refusal = click_button(&browser, "Approve 2 actions").await;
    assert!(refusal.contains("security token is missing"), "{refusal}");
    assert_eq!(h.app().ledger.held_plan_count(), 1, "still held");

    // The session cookie is HttpOnly and SameSite=Strict.
    let cookie = browser
        .get_all_cookies()
        .await
        .unwrap()
        .into_iter()
        .find(|c| c.name() == palworker::console::COOKIE)
        .expect("the session cookie");
    assert_eq!(cookie.http_only(), Some(true));
    assert_eq!(format!("{:?}", cookie.same_site()), "Some(Strict)");
    let session = format!("{}={}", cookie.name(), cookie.value());

    // Outside the browser, with the session's cookie and its CSRF token:
    // from another origin, or saying no origin, refused; from the console's
    // own page, done.
    let held = reqwest::Client::new()
        .get(format!("{base}/held"))
        .header("Cookie", &session)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let csrf = held
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("a CSRF field")
        .to_owned();
    let approve = held
        .split("action=\"")
        .map(|rest| rest.split('"').next().unwrap_or(""))
        .find(|action| action.ends_with("/approve"))
        .expect("the approve form")
        .to_owned();
    let no_redirects = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let post = |origin: Option<&'static str>| {
        let mut request = no_redirects
            .post(format!("{base}{approve}"))
            .header("Cookie", &session)
            .form(&[("csrf", csrf.as_str())]);
        if let Some(origin) = origin {
            request = request.header("Origin", origin);
        }
        request.send()
    };
    let foreign = post(Some("http://evil.example")).await.unwrap();
    assert_eq!(foreign.status(), 403);
    assert!(foreign.text().await.unwrap().contains("another site"));
    assert_eq!(post(None).await.unwrap().status(), 403);
    assert_eq!(h.app().ledger.held_plan_count(), 1, "still held");
    assert_eq!(writes(), before, "nothing written");
    let own: &'static str = Box::leak(base.clone().into_boxed_str());
    let done = post(Some(own)).await.unwrap();
    assert_eq!(
        done.status(),
        303,
        "the same request from the console's page"
    );
    assert_eq!(h.app().ledger.held_plan_count(), 0);

    // Without a session or a token, a change is refused; with
    // `Authorization: Bearer`, a page is served.
    let anonymous = no_redirects
        .post(format!("{base}/pause"))
        .header("Origin", own)
        .form(&[("csrf", csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 403);
    let bearer = no_redirects
        .get(format!("{base}/failed"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(bearer.status(), 200);

    browser.close().await.unwrap();
    drop(driver);
    h.shutdown().await.unwrap();
}

#[tokio::test]
async fn without_an_admin_token_the_console_says_how_to_turn_it_on() {
    let h = Harness::start(HarnessOptions {
        admin_token: None,
        name: "palworker-test-console".into(),
        ..HarnessOptions::default()
    })
    .await
    .unwrap();
    let base = format!("http://{}", h.app().http_addr);
    let page = reqwest::get(format!("{base}/")).await.unwrap();
    assert_eq!(page.url().path(), "/sign-in");
    let page = page.text().await.unwrap();
    assert!(
        page.contains("The console is off") && page.contains("admin_token_file"),
        "{page}"
    );
    let stylesheet = reqwest::get(format!(
        "{base}/assets/console-{}.css",
        env!("CARGO_PKG_VERSION")
    ))
    .await
    .unwrap();
    assert_eq!(stylesheet.status(), 200);
    h.shutdown().await.unwrap();
}
