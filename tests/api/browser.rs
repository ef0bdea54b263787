//! A real headless browser for the console's end-to-end tests: Debian's Chromium driven over the DevTools protocol
//! (chromiumoxide, no driver process, never downloads a browser). `.ci/run` installs `chromium` when it is
//! missing. Screenshots go to `target/console-screenshots/` (not committed).

use std::path::PathBuf;
use std::time::Duration;

use chromiumoxide::cdp::browser_protocol::emulation::SetDeviceMetricsOverrideParams;
use chromiumoxide::cdp::js_protocol::runtime::EvaluateParams;
use chromiumoxide::handler::viewport::Viewport;
use chromiumoxide::page::ScreenshotParams;
use chromiumoxide::{Browser, BrowserConfig, Element, Page};
use futures_util::StreamExt;

use crate::helpers::TestDir;

/// How long a step waits for the page (a selector to appear, a text to change) before the test fails.
const WAIT: Duration = Duration::from_secs(20);

/// Where Chromium is (Debian's package).
fn executable() -> PathBuf {
    std::env::var_os("MANDANT_TEST_CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"))
}

pub struct Headless {
    browser: Browser,
    handler: tokio::task::JoinHandle<()>,
    _profile: TestDir,
}

impl Headless {
    /// Starts Chromium headless with a fresh profile, at 1280×800.
    pub async fn start() -> Self {
        let chromium = executable();
        assert!(
            chromium.exists(),
            "the console's browser tests need Chromium at {} (apt-get install chromium; .ci/run installs it), \
             or MANDANT_TEST_CHROMIUM pointing at one",
            chromium.display()
        );
        let profile = TestDir::new("chromium");
        let config = BrowserConfig::builder()
            .chrome_executable(&chromium)
            .no_sandbox()
            .user_data_dir(profile.path())
            .viewport(Viewport {
                width: 1280,
                height: 800,
                ..Viewport::default()
            })
            .window_size(1280, 800)
            .args([
                "--disable-gpu",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-quic",
                "--disable-dev-shm-usage",
            ])
            .launch_timeout(Duration::from_secs(60))
            .request_timeout(Duration::from_secs(30))
            .build()
            .expect("a browser configuration");
        let (browser, mut events) = Browser::launch(config).await.expect("Chromium starts");
        let handler = tokio::spawn(async move { while events.next().await.is_some() {} });
        Self {
            browser,
            handler,
            _profile: profile,
        }
    }

    /// A new tab at `url`; CSP violations and script errors of the page are collected (see [`Tab::problems`]).
    pub async fn open(&self, url: &str) -> Tab {
        let page = self.browser.new_page("about:blank").await.expect("a tab");
        page.evaluate_on_new_document(
            "window.__problems = [];
             document.addEventListener('securitypolicyviolation',
               e => window.__problems.push('CSP: ' + e.violatedDirective + ' ' + e.blockedURI));
             window.addEventListener('error', e => window.__problems.push('error: ' + e.message));
             window.addEventListener('unhandledrejection',
               e => window.__problems.push('rejection: ' + (e.reason && e.reason.message || e.reason)));",
        )
        .await
        .expect("the page hooks");
        page.goto(url).await.expect("the page loads");
        Tab {
            page,
            screen: std::sync::Mutex::new(None),
        }
    }

    pub async fn close(mut self) {
        let _ = self.browser.close().await;
        let _ = self.browser.wait().await;
        self.handler.abort();
    }
}

pub struct Tab {
    pub page: Page,
    /// The emulated screen size, once [`Tab::resize`]d (a full-page screenshot would reset it).
    screen: std::sync::Mutex<Option<(i64, i64)>>,
}

impl Tab {
    /// The element for `selector`, once it is in the page.
    pub async fn wait_for(&self, selector: &str) -> Element {
        let start = tokio::time::Instant::now();
        loop {
            if let Ok(element) = self.page.find_element(selector).await {
                return element;
            }
            assert!(start.elapsed() < WAIT, "{selector} never appeared");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until `condition` (a JavaScript expression) is true in the page.
    pub async fn wait_until(&self, condition: &str) {
        let start = tokio::time::Instant::now();
        // A condition that throws (an element between two renderings) is not true yet.
        let check = format!(
            "(() => {{ try {{ return !!({condition}); }} catch (e) {{ return false; }} }})()"
        );
        while !self.eval::<bool>(&check).await {
            assert!(start.elapsed() < WAIT, "never true: {condition}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Evaluates a JavaScript expression in the page (a promise is awaited) and returns its value.
    pub async fn eval<T: serde::de::DeserializeOwned>(&self, expression: &str) -> T {
        let params = EvaluateParams::builder()
            .expression(expression)
            .await_promise(true)
            .return_by_value(true)
            .build()
            .expect("an evaluation");
        self.page
            .evaluate_expression(params)
            .await
            .unwrap_or_else(|e| panic!("{expression}: {e}"))
            .into_value()
            .unwrap_or_else(|e| panic!("{expression}: {e}"))
    }

    pub async fn click(&self, selector: &str) {
        self.wait_for(selector)
            .await
            .click()
            .await
            .unwrap_or_else(|e| panic!("click {selector}: {e}"));
    }

    /// Replaces the value of an input by typing `text` into it (real key events).
    pub async fn fill(&self, selector: &str, text: &str) {
        let element = self.wait_for(selector).await;
        element
            .call_js_fn("function() { this.value = ''; }", false)
            .await
            .unwrap_or_else(|e| panic!("clear {selector}: {e}"));
        element
            .click()
            .await
            .unwrap_or_else(|e| panic!("focus {selector}: {e}"));
        element
            .type_str(text)
            .await
            .unwrap_or_else(|e| panic!("type into {selector}: {e}"));
    }

    /// Selects `value` in a `<select>` and tells the page it changed. Looked up and set in one evaluation, again
    /// while the element is missing: a page that renders a panel twice (its data arriving in two answers) can
    /// replace the element between [`Tab::wait_for`] and the next evaluation (seen in CI: `querySelector` null).
    pub async fn select(&self, selector: &str, value: &str) {
        let js = format!(
            "(() => {{ const s = document.querySelector({sel}); if (!s) return [false, '']; s.value = {val};
                s.dispatchEvent(new Event('input', {{bubbles: true}}));
                s.dispatchEvent(new Event('change', {{bubbles: true}})); return [true, s.value]; }})()",
            sel = serde_json::to_string(selector).unwrap(),
            val = serde_json::to_string(value).unwrap(),
        );
        let start = tokio::time::Instant::now();
        let now = loop {
            // (found, its value now): a JavaScript null would come back as no value at all.
            if let (true, now) = self.eval::<(bool, String)>(&js).await {
                break now;
            }
            let text: String = self.eval("document.body.innerText").await;
            assert!(
                start.elapsed() < WAIT,
                "{selector} never appeared; the page: {text}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert_eq!(now, value, "{selector} has no option {value}");
    }

    /// Goes to a route of the single-page console (`#/page?query`): a same-document navigation, which `goto`
    /// would wait for in vain.
    pub async fn route(&self, hash: &str) {
        let js = format!(
            "location.hash = {}; true",
            serde_json::to_string(hash).unwrap()
        );
        let _: bool = self.eval(&js).await;
    }

    /// The visible text of the page.
    pub async fn text(&self) -> String {
        self.eval("document.body.innerText").await
    }

    /// Whether an element matches `selector` now.
    pub async fn has(&self, selector: &str) -> bool {
        self.eval(&format!(
            "!!document.querySelector({})",
            serde_json::to_string(selector).unwrap()
        ))
        .await
    }

    /// CSP violations and script errors seen so far.
    pub async fn problems(&self) -> Vec<String> {
        self.eval("window.__problems || []").await
    }

    /// Saves a screenshot of the whole page (of the screen, when resized) as
    /// `target/console-screenshots/<name>.png`.
    pub async fn screenshot(&self, name: &str) {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/console-screenshots");
        std::fs::create_dir_all(&dir).expect("the screenshot folder");
        let full_page = self.screen.lock().unwrap().is_none();
        self.page
            .save_screenshot(
                ScreenshotParams::builder().full_page(full_page).build(),
                dir.join(format!("{name}.png")),
            )
            .await
            .unwrap_or_else(|e| panic!("screenshot {name}: {e}"));
    }

    /// Emulates a screen of this width (a phone: 390).
    pub async fn resize(&self, width: i64, height: i64) {
        let params = SetDeviceMetricsOverrideParams::builder()
            .width(width)
            .height(height)
            .device_scale_factor(1.0)
            .mobile(width < 700)
            .build()
            .expect("device metrics");
        self.page.execute(params).await.expect("resize");
        *self.screen.lock().unwrap() = Some((width, height));
    }
}
