//! The console end to end in a real headless Chromium (issue #22): a user signs in with a token, works through the
//! pages as seed 004 describes, and what the page did is verified through the API and the control plane.
//! Screenshots of each page are saved to `target/console-screenshots/` (not committed).

use serde_json::{Value, json};

use crate::access::{call, user};
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

#[tokio::test]
async fn an_administrator_creates_a_client_sees_it_become_active_and_sets_the_access_matrix_for_two_users()
 {
    let app = spawn_app().await;
    user(&app, "dora", "master", &["editor"], &[]).await;
    user(&app, "emil", "master", &["viewer"], &[]).await;
    let browser = Headless::start().await;
    let tab = signed_in(&browser, &app, ADMIN_TOKEN).await;

    // Administration → Clients, the green plus, a name, save (seed 004).
    tab.click("nav a[href^='#/clients']").await;
    tab.click("#new-client").await;
    tab.fill("#client-name", "Acme GmbH").await;
    assert_eq!(
        tab.eval::<String>("document.getElementById('client-slug').value")
            .await,
        "acme-gmbh",
        "a slug is suggested from the name"
    );
    tab.fill("#client-slug", "acme").await;
    tab.screenshot("clients-create").await;
    tab.click("#create-client").await;
    tab.wait_until("document.querySelector('tr[data-slug=acme] .status')")
        .await;
    tab.wait_until(
        "document.querySelector('tr[data-slug=acme] .status').innerText.includes('active')",
    )
    .await;
    tab.screenshot("clients").await;
    assert_eq!(app.client_json("acme").await["status"], "active");
    assert_eq!(app.client_json("acme").await["name"], "Acme GmbH");

    // An inner client in acme's database, scoped to one of its mailing lists.
    let list: Value = app
        .post_json(
            "/v1/clients/acme/mailing-lists",
            &json!({"name": "Shop customers"}),
        )
        .await
        .json()
        .await
        .unwrap();
    let list_id = list["id"].as_i64().unwrap();
    tab.click("#new-client").await;
    tab.fill("#client-name", "Acme Shop").await;
    tab.select("#client-parent", "acme").await;
    tab.select("#client-kind", "inner").await;
    tab.click(&format!("#client-scope input[value='{list_id}']"))
        .await;
    tab.screenshot("clients-create-inner").await;
    tab.click("#create-client").await;
    tab.wait_until("document.querySelector('tr[data-slug=acme-shop] .status')")
        .await;
    let inner = app.client_json("acme-shop").await;
    assert_eq!(inner["kind"], "inner", "{inner}");
    assert_eq!(inner["parent"], "acme");
    assert_eq!(inner["scope"]["lists"], json!([list_id]));

    // Tick the client, set two users' access, save once.
    tab.click("nav a[href^='#/access']").await;
    tab.click("#access-client-acme").await;
    // acme's rows, not those of the client the page opened with (the master), which have a dora row too.
    tab.wait_for("select[name=level-dora][aria-label='Access of dora to acme']")
        .await;
    tab.select("select[name=level-dora]", "full").await;
    tab.click("input[name=private-dora]").await;
    tab.select("select[name=level-emil]", "read").await;
    tab.screenshot("access-edit").await;
    tab.click("#save-access").await;
    tab.wait_until("document.body.innerText.includes('Saved.')")
        .await;
    tab.screenshot("access").await;
    assert_eq!(
        crate::console::stored_access(&app, "acme").await,
        [
            ("dora".to_owned(), "full".to_owned(), true),
            ("emil".to_owned(), "read".to_owned(), false),
        ],
        "exactly those grants exist"
    );
    let (_, _, dora) = call(
        &app,
        Some(ADMIN_TOKEN),
        reqwest::Method::GET,
        "/v1/users/dora",
        None,
    )
    .await;
    assert_eq!(
        dora["access"],
        json!([{"client": "acme", "level": "full", "private_data": true}])
    );
    // The audit log page shows the change, made through the console as through the API.
    tab.click("nav a[href^='#/audit']").await;
    tab.wait_until("document.body.innerText.includes('/v1/clients/acme/access')")
        .await;
    tab.screenshot("audit").await;
    no_problems(&tab).await;
    browser.close().await;
    app.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_read_only_user_sees_no_write_controls_a_crafted_change_is_refused_and_an_invisible_client_never_appears()
 {
    let app = spawn_app().await;
    app.create_active_client("acme").await;
    app.create_active_client("secret-co").await;
    let (status, _, _) = call(
        &app,
        Some(ADMIN_TOKEN),
        reqwest::Method::POST,
        "/v1/clients/acme/recipients",
        Some(json!({"email": "kim@example.com", "first_name": "Kim", "last_name": "Lee"})),
    )
    .await;
    assert_eq!(status, reqwest::StatusCode::CREATED);
    let reader = user(
        &app,
        "reader",
        "acme",
        &["client-admin"],
        &[("acme", "read", false)],
    )
    .await;
    let browser = Headless::start().await;
    let tab = signed_in(&browser, &app, &reader).await;

    for page in [
        "overview",
        "clients",
        "access",
        "users",
        "fields",
        "templates",
        "recipients",
    ] {
        tab.route(&format!("#/{page}?client=acme")).await;
        tab.wait_until("document.querySelector('main h1')").await;
        // Let the page's data arrive before judging it.
        tab.wait_until("!document.querySelector('main .loading')")
            .await;
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        let text = tab.text().await;
        assert!(
            !text.contains("secret-co"),
            "{page}: an invisible client appears: {text}"
        );
        for control in [
            "#new-client",
            "#save-access",
            ".manage",
            "#delete-client",
            "#new-template",
            "#save-override",
        ] {
            assert!(
                !tab.has(control).await,
                "{page}: a read-only user sees {control}"
            );
        }
        tab.screenshot(&format!("read-only-{page}")).await;
    }
    let options: String = tab
        .eval("[...document.querySelectorAll('#client-filter option')].map(o => o.value).join(',')")
        .await;
    assert!(!options.contains("secret-co"), "{options}");

    // A crafted change from the signed-in page: without the CSRF token, then with it; both refused.
    let crafted: Value = tab
        .eval(
            "(async () => {
                const bare = await fetch('/v1/clients/acme/suspend', {method: 'POST'});
                const s = await (await fetch('/v1/session')).json();
                const forged = await fetch('/v1/clients/acme/suspend',
                    {method: 'POST', headers: {'X-CSRF-Token': s.csrf_token}});
                const hidden = await fetch('/v1/clients/secret-co/suspend',
                    {method: 'POST', headers: {'X-CSRF-Token': s.csrf_token}});
                return [bare.status, (await bare.json()).error.code, forged.status, (await forged.json()).error.code,
                        hidden.status];
            })()",
        )
        .await;
    assert_eq!(
        crafted,
        json!([403, "csrf_failed", 403, "read_only_access", 404])
    );
    assert_eq!(app.client_json("acme").await["status"], "active");
    assert_eq!(app.client_json("secret-co").await["status"], "active");

    // Masking in the recipients browser: no private-data right, no e-mail or names.
    tab.route("#/recipients?client=acme").await;
    tab.wait_for("#recipients tbody tr").await;
    let table: String = tab
        .eval("document.getElementById('recipients').innerText")
        .await;
    assert!(
        !table.contains("kim@example.com") && !table.contains("Kim"),
        "{table}"
    );
    tab.screenshot("recipients-masked").await;
    no_problems(&tab).await;
    browser.close().await;

    // The same page for a user with the private-data right shows them.
    let private = user(
        &app,
        "private",
        "acme",
        &["viewer"],
        &[("acme", "read", true)],
    )
    .await;
    let browser = Headless::start().await;
    let tab = signed_in(&browser, &app, &private).await;
    tab.route("#/recipients?client=acme").await;
    tab.wait_for("#recipients tbody tr").await;
    let table: String = tab
        .eval("document.getElementById('recipients').innerText")
        .await;
    assert!(
        table.contains("kim@example.com") && table.contains("Kim"),
        "{table}"
    );
    tab.screenshot("recipients").await;
    browser.close().await;
    app.shutdown().await.unwrap();
}

/// Acme's copy of the template `id`, as the API shows it.
async fn client_template(app: &TestApp, id: &str) -> Value {
    let path = format!("/v1/clients/acme/templates/{id}");
    call(app, Some(ADMIN_TOKEN), reqwest::Method::GET, &path, None)
        .await
        .2
}

#[tokio::test]
async fn a_template_override_and_its_revert_in_the_console_show_in_the_api_and_bodies_are_never_rendered()
 {
    let app = spawn_app().await;
    app.create_active_client("acme").await;
    let hostile = "<img src=x id=pwned onerror=\"window.__pwned=1\">Hello";
    let created: Value = app
        .post_json(
            "/v1/templates",
            &json!({"name": "<b>Welcome</b>", "subject": "Hi", "html_body": hostile}),
        )
        .await
        .json()
        .await
        .unwrap();
    let id = created["id"].as_str().unwrap().to_owned();
    crate::templates::wait_for_sync(&app, &id, |c| c["status"] == "synced").await;

    let browser = Headless::start().await;
    let tab = signed_in(&browser, &app, ADMIN_TOKEN).await;
    tab.route("#/templates/acme").await;
    let row = format!("#client-templates tr[data-template='{id}']");
    tab.click(&format!("{row} .open-template")).await;
    tab.wait_for("#override-body").await;
    assert_eq!(
        tab.eval::<String>("document.getElementById('override-body').value")
            .await,
        hostile,
        "the body is shown as text"
    );
    tab.fill("#override-body", "<p>Our own welcome</p>").await;
    tab.click("#save-override").await;
    tab.wait_until(&format!(
        "document.querySelector(\"{row} .status\").innerText.includes('overridden')"
    ))
    .await;
    tab.screenshot("templates-override").await;
    let ours = client_template(&app, &id).await;
    assert_eq!(ours["overridden"], true, "{ours}");
    assert_eq!(ours["html_body"], "<p>Our own welcome</p>");

    tab.click("#revert-override").await;
    tab.wait_until(&format!(
        "document.querySelector(\"{row} .status\").innerText.includes('inherited')"
    ))
    .await;
    tab.screenshot("templates").await;
    let back = client_template(&app, &id).await;
    assert_eq!(back["overridden"], false, "{back}");
    assert_eq!(back["html_body"], hostile);
    let rendered: bool = tab
        .eval("!!(window.__pwned || document.getElementById('pwned') || document.querySelector('main b'))")
        .await;
    assert!(!rendered, "a template's name or body was rendered as HTML");
    no_problems(&tab).await;
    browser.close().await;
    app.shutdown().await.unwrap();
}

/// Controls without an accessible name (no label, no aria-label, a button without text), on the page now.
const UNLABELLED: &str =
    "[...document.querySelectorAll('input:not([type=hidden]),select,textarea,button')]
    .filter(e => !(e.labels && e.labels.length) && !e.getAttribute('aria-label')
                 && !(e.tagName === 'BUTTON' && e.innerText.trim()))
    .map(e => e.id || e.name || e.outerHTML.slice(0, 80))";

#[tokio::test]
async fn the_console_works_by_keyboard_and_at_phone_width_and_every_control_has_a_label() {
    let app = spawn_app().await;
    app.create_active_client("acme").await;
    user(
        &app,
        "dora",
        "acme",
        &["editor"],
        &[("acme", "full", false)],
    )
    .await;
    let browser = Headless::start().await;

    // Keyboard only: the token field has the focus, Enter signs in.
    let tab = browser.open(&app.url("/console/")).await;
    tab.wait_for("#token").await;
    tab.wait_until("document.activeElement && document.activeElement.id === 'token'")
        .await;
    let focused = tab.wait_for("#token").await;
    focused.type_str(ADMIN_TOKEN).await.unwrap();
    focused.press_key("Enter").await.unwrap();
    tab.wait_until("!document.getElementById('nav').hidden")
        .await;

    for page in [
        "overview",
        "clients",
        "access",
        "users",
        "roles",
        "fields",
        "templates",
        "recipients",
        "audit",
        "servers",
    ] {
        tab.route(&format!("#/{page}?client=acme")).await;
        tab.wait_until("document.querySelector('main h1')").await;
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        let unlabelled: Vec<String> = tab.eval(UNLABELLED).await;
        assert!(
            unlabelled.is_empty(),
            "{page}: controls without a label: {unlabelled:?}"
        );
        let focus_style: String = tab
            .eval(
                "(() => { const a = document.querySelector('nav a'); a.focus();
                    return getComputedStyle(a).outlineStyle; })()",
            )
            .await;
        assert_ne!(focus_style, "none", "{page}: focus is not visible");
    }
    // A client's panel opened from the keyboard has labelled controls too.
    tab.route("#/clients").await;
    tab.click("tr[data-slug=acme] .manage").await;
    tab.wait_for("#client-panel").await;
    let unlabelled: Vec<String> = tab.eval(UNLABELLED).await;
    assert!(unlabelled.is_empty(), "client panel: {unlabelled:?}");

    // Phone width: nothing but tables scrolls sideways.
    tab.resize(390, 844).await;
    for page in ["clients", "access", "overview"] {
        tab.route(&format!("#/{page}")).await;
        tab.wait_until("document.querySelector('main h1')").await;
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        let overflow: i64 = tab
            .eval("document.documentElement.scrollWidth - document.documentElement.clientWidth")
            .await;
        assert!(overflow <= 1, "{page} is {overflow}px wider than a phone");
        tab.screenshot(&format!("phone-{page}")).await;
    }
    no_problems(&tab).await;
    browser.close().await;
    app.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_clients_own_field_is_changed_in_the_console_and_the_api_shows_it() {
    let app = spawn_app().await;
    app.create_active_client("acme").await;
    let created = app
        .post_json(
            "/v1/clients/acme/fields",
            &json!({"name": "city", "type": "text", "length": 50}),
        )
        .await;
    assert!(created.status().is_success(), "{}", created.status());
    let browser = Headless::start().await;
    let tab = signed_in(&browser, &app, ADMIN_TOKEN).await;
    tab.route("#/fields/acme").await;
    tab.click("#client-fields tr[data-field=city] .change-field")
        .await;
    // Outside the API's range: refused by the page, nothing sent.
    tab.fill("#change-field-length", "0").await;
    tab.click("#save-field").await;
    tab.wait_until("document.querySelector('#change-field-form [role=alert]')")
        .await;
    tab.fill("#change-field-length", "80").await;
    tab.click("#change-field-personal").await;
    tab.screenshot("fields-change").await;
    tab.click("#save-field").await;
    tab.wait_until("!document.getElementById('change-field-form')")
        .await;
    let fields: Value = app
        .get("/v1/clients/acme/fields")
        .await
        .json()
        .await
        .unwrap();
    let city = fields["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == "city")
        .cloned()
        .unwrap();
    assert_eq!(city["length"], 80, "{city}");
    assert_eq!(city["personal"], true, "{city}");
    no_problems(&tab).await;
    browser.close().await;
    app.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_parents_mailing_lists_that_arrive_after_another_parent_was_chosen_are_not_shown() {
    let app = spawn_app().await;
    app.create_active_client("acme").await;
    app.create_active_client("beta").await;
    let created = app
        .post_json(
            "/v1/clients/acme/mailing-lists",
            &json!({"name": "Shop customers"}),
        )
        .await;
    assert!(created.status().is_success(), "{}", created.status());
    let browser = Headless::start().await;
    let tab = signed_in(&browser, &app, ADMIN_TOKEN).await;
    tab.route("#/clients").await;
    tab.click("#new-client").await;
    tab.select("#client-parent", "acme").await;
    // acme's lists answer late: asked for first, they arrive after beta's, the parent chosen since.
    let _: bool = tab
        .eval(
            "(() => { const real = window.fetch; window.__late = 'asked';
                window.fetch = (url, init) => String(url).startsWith('/v1/clients/acme/mailing-lists')
                  ? real(url, init).then((answer) => new Promise((done) =>
                      setTimeout(() => { window.__late = 'answered'; done(answer); }, 1500)))
                  : real(url, init);
                return true; })()",
        )
        .await;
    tab.select("#client-kind", "inner").await;
    tab.select("#client-parent", "beta").await;
    tab.wait_until(
        "document.getElementById('client-scope').innerText.includes('The parent has no mailing lists yet.')",
    )
    .await;
    tab.wait_until("window.__late === 'answered'").await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let scope: String = tab
        .eval("document.getElementById('client-scope').innerText")
        .await;
    assert!(
        !scope.contains("Shop customers") && scope.contains("The parent has no mailing lists yet."),
        "acme's lists replaced beta's: {scope}"
    );
    assert!(!tab.has("#client-scope input[name=scope-list]").await);
    no_problems(&tab).await;
    browser.close().await;
    app.shutdown().await.unwrap();
}
