//! The console end to end in a real headless Chromium (issue #22): a user signs in with a token, works through the
//! pages as seed 004 describes, and what the page did is verified through the API and the control plane.
//! Screenshots of each page are saved to `target/console-screenshots/` (not committed).

use crate::browser::{Headless, Tab};
use crate::helpers::{ADMIN_TOKEN, TestApp, spawn_app};

/// Opens the console and signs in with `token`; returns once the navigation is shown.
async fn signed_in(browser: &Headless, app: &TestApp, token: &str) -> Tab {
    let tab = browser.open(&app.url("/")).await;
    tab.fill("#token", token).await;
    tab.click("#sign-in").await;
    tab.wait_until("!document.getElementById('nav').hidden")
        .await;
    assert_eq!(
        tab.eval::<String>(
            "document.getElementById('token') ? document.getElementById('token').value : ''"
        )
        .await,
        "",
        "the token does not stay in the page"
    );
    tab
}

/// Asserts the page neither broke its Content-Security-Policy nor threw.
async fn no_problems(tab: &Tab) {
    let problems = tab.problems().await;
    assert!(problems.is_empty(), "{problems:?}");
}

#[tokio::test]
async fn a_user_signs_in_with_a_token_and_out_again_and_the_session_is_gone() {
    let app = spawn_app().await;
    let browser = Headless::start().await;
    let tab = browser.open(&app.url("/")).await;
    tab.wait_for("#token").await;
    tab.screenshot("sign-in").await;
    // A wrong token: an error, no session.
    tab.fill("#token", "mdt_wrongwrongwrongwrongwrongwrongwrongwrongwro")
        .await;
    tab.click("#sign-in").await;
    tab.wait_until("document.querySelector('[role=alert]')")
        .await;
    assert_eq!(
        app.control_i64("SELECT count(*) FROM console_sessions")
            .await,
        0
    );

    let tab = signed_in(&browser, &app, ADMIN_TOKEN).await;
    assert_eq!(
        app.control_i64("SELECT count(*) FROM console_sessions")
            .await,
        1
    );
    let storage: String = tab
        .eval("JSON.stringify([Object.keys(localStorage), Object.keys(sessionStorage), document.cookie, location.href])")
        .await;
    assert!(!storage.contains(ADMIN_TOKEN), "{storage}");
    assert!(
        !storage.contains("mandant_session"),
        "the cookie is HttpOnly: {storage}"
    );
    tab.screenshot("overview").await;
    no_problems(&tab).await;

    tab.click("#sign-out").await;
    tab.wait_for("#token").await;
    assert_eq!(
        app.control_i64("SELECT count(*) FROM console_sessions")
            .await,
        0
    );
    // Reloaded: still signed out.
    tab.page.reload().await.unwrap();
    tab.wait_for("#token").await;
    no_problems(&tab).await;
    browser.close().await;
    app.shutdown().await.unwrap();
}
