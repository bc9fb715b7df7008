//! The PAL simulator over real HTTP: token endpoint, partner-link calls, fault
//! injection and the `/_sim` admin API, against a simulator spawned on
//! 127.0.0.1:0.

use std::collections::BTreeSet;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use palworker_sim::{FaultProfile, Faults, SimClient, SimConfig, SimHandle, Simulator};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

const TENANT_A: &str = "1b1121dd-6900-412a-af73-e8d44f81e1c1";
const TENANT_B: &str = "2c2232ee-7a11-423b-b084-f9e55f92f2d2";
/// Service principal of `APP_ONE` in tenant A.
const ONE_IN_A: &str = "aa67f786-0552-423e-8849-244ed12bf581";
/// Service principal of `APP_ONE` in tenant B.
const ONE_IN_B: &str = "bb78a897-1663-434f-995a-355fe23ca692";
/// Service principal of `APP_TWO` in tenant A.
const TWO_IN_A: &str = "cc89b9a8-2774-4450-aa6b-466af34db7a3";
/// Service principal of `APP_CERT` in tenant A.
const CERT_IN_A: &str = "dd9acab9-3885-4561-bb7c-577b045ec8b4";
const APP_ONE: &str = "11111111-aaaa-4aaa-8aaa-111111111111";
const APP_TWO: &str = "22222222-bbbb-4bbb-8bbb-222222222222";
const APP_CERT: &str = "33333333-cccc-4ccc-8ccc-333333333333";
const SECRET_ONE: &str = "secret-one";
const SECRET_TWO: &str = "secret-two";
const PARTNERS: &str = "/providers/Microsoft.ManagementPartner/partners";
const API: &str = "api-version=2018-02-01";

const CLIENT_CERTIFICATE: &str = include_str!("../src/testdata/client.cert.pem");
const CLIENT_KEY: &str = include_str!("../src/testdata/client.key.pem");
const CLIENT_THUMBPRINT: &str = "81LeRwpM0iD_OgzZJXV1Dz4oqiVfn4EgEJ2dWW5x1SY";
const OTHER_KEY: &str = include_str!("../src/testdata/other.key.pem");

fn config() -> SimConfig {
    SimConfig {
        clients: vec![
            SimClient::with_secret(APP_ONE, SECRET_ONE)
                .identity(TENANT_A, ONE_IN_A)
                .identity(TENANT_B, ONE_IN_B),
            SimClient::with_secret(APP_TWO, SECRET_TWO).identity(TENANT_A, TWO_IN_A),
            SimClient::with_certificate(APP_CERT, CLIENT_CERTIFICATE).identity(TENANT_A, CERT_IN_A),
        ],
        seed: Some(1),
        ..SimConfig::default()
    }
}

struct TestSim {
    simulator: Simulator,
    handle: SimHandle,
    http: reqwest::Client,
}

struct Answer {
    status: StatusCode,
    headers: reqwest::header::HeaderMap,
    text: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or_else(|error| {
            panic!("{} is not JSON ({error}): {:?}", self.status, self.text)
        })
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|value| value.to_str().ok())
    }

    /// `code` of an ARM error, checked to appear in both places.
    fn arm_code(&self) -> String {
        let body = self.json();
        assert_eq!(body["error"]["code"], body["code"], "{body}");
        assert_eq!(body["error"]["message"], body["message"], "{body}");
        body["code"].as_str().unwrap_or_default().to_owned()
    }
}

async fn spawn_sim(config: SimConfig) -> TestSim {
    let simulator = Simulator::new(config);
    let handle = simulator
        .spawn("127.0.0.1:0".parse().unwrap())
        .await
        .expect("simulator binds");
    TestSim {
        simulator,
        handle,
        http: reqwest::Client::new(),
    }
}

impl TestSim {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.handle.base_url())
    }

    fn token_path(tenant: &str) -> String {
        format!("/{tenant}/oauth2/v2.0/token")
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> Answer {
        let response = request.send().await.expect("simulator answers");
        Answer {
            status: response.status(),
            headers: response.headers().clone(),
            text: response.text().await.expect("body"),
        }
    }

    async fn token_request(&self, tenant: &str, form: &[(&str, &str)]) -> Answer {
        self.send(
            self.http
                .post(self.url(&Self::token_path(tenant)))
                .form(form),
        )
        .await
    }

    async fn secret_token_request(&self, tenant: &str, client_id: &str, secret: &str) -> Answer {
        self.token_request(
            tenant,
            &[
                ("grant_type", "client_credentials"),
                ("client_id", client_id),
                ("scope", "https://management.azure.com/.default"),
                ("client_secret", secret),
            ],
        )
        .await
    }

    async fn token(&self, tenant: &str, client_id: &str, secret: &str) -> String {
        let answer = self.secret_token_request(tenant, client_id, secret).await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.text);
        answer.json()["access_token"]
            .as_str()
            .expect("access_token")
            .to_owned()
    }

    /// An ARM call with `?api-version=2018-02-01`; `partner` selects `/partners/{id}`.
    async fn arm(&self, method: Method, partner: Option<&str>, token: &str) -> Answer {
        let path = match partner {
            Some(id) => format!("{PARTNERS}/{id}?{API}"),
            None => format!("{PARTNERS}?{API}"),
        };
        self.send(
            self.http
                .request(method, self.url(&path))
                .bearer_auth(token),
        )
        .await
    }

    async fn admin_get(&self, path: &str) -> Value {
        let answer = self.send(self.http.get(self.url(path))).await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.text);
        answer.json()
    }

    async fn put_faults(&self, faults: &Value) -> Answer {
        self.send(self.http.put(self.url("/_sim/faults")).json(faults))
            .await
    }

    async fn advance_clock(&self, seconds: u64) {
        let answer = self
            .send(
                self.http
                    .post(self.url("/_sim/clock"))
                    .json(&json!({"advance_secs": seconds})),
            )
            .await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.text);
    }
}

fn jwt_claims(token: &str) -> Value {
    let payload = token.split('.').nth(1).expect("a JWT has three parts");
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).expect("base64url")).expect("JSON")
}

/// Checks the identity platform's error shape and returns `(error, code)`.
fn aad_error(answer: &Answer) -> (String, u64) {
    let body = answer.json();
    let code = body["error_codes"][0].as_u64().expect("error_codes");
    let description = body["error_description"]
        .as_str()
        .expect("error_description");
    assert!(
        description.starts_with(&format!("AADSTS{code}: ")),
        "{description}"
    );
    for field in ["timestamp", "trace_id", "correlation_id"] {
        assert!(body[field].is_string(), "{field} missing in {body}");
    }
    (body["error"].as_str().expect("error").to_owned(), code)
}

fn client_assertion(private_key: &str, algorithm: Algorithm, claims: &Value) -> String {
    let mut header = Header::new(algorithm);
    header.x5t_s256 = Some(CLIENT_THUMBPRINT.to_owned());
    jsonwebtoken::encode(
        &header,
        claims,
        &EncodingKey::from_rsa_pem(private_key.as_bytes()).expect("test key"),
    )
    .expect("signing")
}

fn assertion_claims(audience: &str) -> Value {
    let now = chrono::Utc::now().timestamp();
    json!({"aud": audience, "iss": APP_CERT, "sub": APP_CERT, "jti": uuid::Uuid::new_v4(),
           "nbf": now, "iat": now, "exp": now + 600})
}

#[tokio::test]
async fn token_endpoint_issues_a_bearer_jwt_naming_the_identity() {
    let sim = spawn_sim(config()).await;
    let answer = sim
        .secret_token_request(TENANT_B, APP_ONE, SECRET_ONE)
        .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text);
    let body = answer.json();
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 3599);
    assert_eq!(body["ext_expires_in"], 3599);
    let claims = jwt_claims(body["access_token"].as_str().unwrap());
    assert_eq!(claims["tid"], TENANT_B);
    assert_eq!(claims["oid"], ONE_IN_B);
    assert_eq!(claims["appid"], APP_ONE);
    assert_eq!(claims["aud"], "https://management.azure.com/");
    assert_eq!(
        claims["iss"],
        format!("https://sts.windows.net/{TENANT_B}/")
    );
    assert_eq!(
        claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(),
        3599
    );
    assert!(claims["nbf"].as_i64().unwrap() <= claims["iat"].as_i64().unwrap());

    let records = sim.simulator.token_requests();
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].client_id.as_deref(), Some(APP_ONE));
    assert_eq!((records[0].status, records[0].error_code), (200, None));
    assert!(
        sim.simulator.requests().is_empty(),
        "token requests are not ARM requests"
    );
}

#[tokio::test]
async fn certificate_assertions_signed_by_the_registered_key_get_tokens() {
    let sim = spawn_sim(config()).await;
    let audience = sim.url(&TestSim::token_path(TENANT_A));
    for algorithm in [Algorithm::RS256, Algorithm::PS256] {
        let assertion = client_assertion(CLIENT_KEY, algorithm, &assertion_claims(&audience));
        let answer = sim
            .token_request(
                TENANT_A,
                &[
                    ("grant_type", "client_credentials"),
                    ("client_id", APP_CERT),
                    ("scope", "https://management.azure.com/.default"),
                    ("client_assertion_type", palworker_sim::JWT_BEARER),
                    ("client_assertion", &assertion),
                ],
            )
            .await;
        assert_eq!(
            answer.status,
            StatusCode::OK,
            "{algorithm:?}: {}",
            answer.text
        );
        let claims = jwt_claims(answer.json()["access_token"].as_str().unwrap());
        assert_eq!(
            (claims["tid"].as_str(), claims["oid"].as_str()),
            (Some(TENANT_A), Some(CERT_IN_A))
        );
    }

    let forged = client_assertion(OTHER_KEY, Algorithm::RS256, &assertion_claims(&audience));
    let wrong_audience = client_assertion(
        CLIENT_KEY,
        Algorithm::RS256,
        &assertion_claims(&sim.url(&TestSim::token_path(TENANT_B))),
    );
    for assertion in [forged, wrong_audience] {
        let answer = sim
            .token_request(
                TENANT_A,
                &[
                    ("grant_type", "client_credentials"),
                    ("client_id", APP_CERT),
                    ("scope", "https://management.azure.com/.default"),
                    ("client_assertion_type", palworker_sim::JWT_BEARER),
                    ("client_assertion", &assertion),
                ],
            )
            .await;
        assert_eq!(answer.status, StatusCode::UNAUTHORIZED, "{}", answer.text);
        assert_eq!(aad_error(&answer), ("invalid_client".to_owned(), 700_027));
    }
}

#[tokio::test]
async fn wrong_secret_is_invalid_client_7000215() {
    let sim = spawn_sim(config()).await;
    let answer = sim
        .secret_token_request(TENANT_A, APP_ONE, "not-the-secret")
        .await;
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
    assert_eq!(aad_error(&answer), ("invalid_client".to_owned(), 7_000_215));
    assert!(!answer.text.contains(SECRET_ONE));
    // Another client's secret is no better.
    let answer = sim
        .secret_token_request(TENANT_A, APP_ONE, SECRET_TWO)
        .await;
    assert_eq!(aad_error(&answer).1, 7_000_215);
    assert_eq!(
        sim.simulator.token_requests()[0].error_code,
        Some(7_000_215)
    );
}

#[tokio::test]
async fn unknown_client_or_client_foreign_to_the_tenant_is_unauthorized_client_700016() {
    let sim = spawn_sim(config()).await;
    let unknown = sim
        .secret_token_request(TENANT_A, "99999999-9999-4999-8999-999999999999", "x")
        .await;
    assert_eq!(unknown.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        aad_error(&unknown),
        ("unauthorized_client".to_owned(), 700_016)
    );
    // APP_TWO exists but has no service principal in tenant B.
    let foreign = sim
        .secret_token_request(TENANT_B, APP_TWO, SECRET_TWO)
        .await;
    assert_eq!(foreign.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        aad_error(&foreign),
        ("unauthorized_client".to_owned(), 700_016)
    );
}

#[tokio::test]
async fn unknown_or_malformed_tenant_is_invalid_request_90002() {
    let sim = spawn_sim(config()).await;
    for tenant in [
        "3d3343ff-8b22-434c-a195-0af66fa3f3e3",
        "contoso.onmicrosoft.com",
        "common",
    ] {
        let answer = sim.secret_token_request(tenant, APP_ONE, SECRET_ONE).await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{tenant}");
        assert_eq!(
            aad_error(&answer),
            ("invalid_request".to_owned(), 90002),
            "{tenant}"
        );
    }
}

#[tokio::test]
async fn bad_scope_grant_and_disabled_client_have_their_own_codes() {
    let sim = spawn_sim(config()).await;
    let bad_scope = sim
        .token_request(
            TENANT_A,
            &[
                ("grant_type", "client_credentials"),
                ("client_id", APP_ONE),
                ("scope", "https://graph.microsoft.com/.default"),
                ("client_secret", SECRET_ONE),
            ],
        )
        .await;
    assert_eq!(bad_scope.status, StatusCode::BAD_REQUEST);
    assert_eq!(aad_error(&bad_scope), ("invalid_scope".to_owned(), 70011));

    let no_credential = sim
        .token_request(
            TENANT_A,
            &[
                ("grant_type", "client_credentials"),
                ("client_id", APP_ONE),
                ("scope", "https://management.azure.com/.default"),
            ],
        )
        .await;
    assert_eq!(no_credential.status, StatusCode::UNAUTHORIZED);
    assert_eq!(aad_error(&no_credential).0, "invalid_client");

    let password_grant = sim
        .token_request(
            TENANT_A,
            &[("grant_type", "password"), ("client_id", APP_ONE)],
        )
        .await;
    assert_eq!(aad_error(&password_grant).0, "unsupported_grant_type");

    // Disable APP_TWO through the admin API (a client with the same ID replaces it).
    let disabled = json!({"client_id": APP_TWO, "client_secret": SECRET_TWO,
                          "identities": {TENANT_A: TWO_IN_A}, "disabled": true});
    let added = sim
        .send(sim.http.post(sim.url("/_sim/clients")).json(&disabled))
        .await;
    assert_eq!(added.status, StatusCode::CREATED, "{}", added.text);
    let answer = sim
        .secret_token_request(TENANT_A, APP_TWO, SECRET_TWO)
        .await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        aad_error(&answer),
        ("unauthorized_client".to_owned(), 7_000_112)
    );
}

#[tokio::test]
async fn link_lifecycle_follows_the_pal_contract() {
    let sim = spawn_sim(config()).await;
    let token = sim.token(TENANT_A, APP_ONE, SECRET_ONE).await;

    let missing = sim.arm(Method::GET, None, &token).await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert_eq!(missing.arm_code(), "ManagementPartnerNotFound");

    let created = sim.arm(Method::PUT, Some("123456"), &token).await;
    assert_eq!(created.status, StatusCode::OK, "{}", created.text);
    let created = created.json();
    assert_eq!(
        created["id"],
        "/providers/microsoft.managementpartner/partners/123456"
    );
    assert_eq!(created["type"], "Microsoft.ManagementPartner/partners");
    assert_eq!(created["name"], "123456");
    assert_eq!(created["etag"], 1);
    let properties = &created["properties"];
    assert_eq!(properties["partnerId"], "123456");
    assert_eq!(properties["partnerName"], "Simulated Partner 123456");
    assert_eq!(properties["tenantId"], TENANT_A);
    assert_eq!(properties["objectId"], ONE_IN_A);
    assert_eq!(properties["version"], 1);
    assert_eq!(properties["state"], "Active");
    let created_time = properties["createdTime"].as_str().unwrap().to_owned();
    assert!(
        created_time.ends_with('Z') && created_time.len() == 28,
        "{created_time}"
    );

    let shown = sim.arm(Method::GET, None, &token).await;
    assert_eq!(shown.status, StatusCode::OK);
    assert_eq!(shown.json(), created);
    assert_eq!(
        sim.arm(Method::GET, Some("123456"), &token).await.status,
        StatusCode::OK
    );
    let other_id = sim.arm(Method::GET, Some("654321"), &token).await;
    assert_eq!(other_id.status, StatusCode::NOT_FOUND);
    assert_eq!(other_id.arm_code(), "ManagementPartnerNotFound");

    let upserted = sim.arm(Method::PUT, Some("123456"), &token).await.json();
    assert_eq!(
        (
            upserted["etag"].as_u64(),
            upserted["properties"]["version"].as_u64()
        ),
        (Some(2), Some(2))
    );
    assert_eq!(upserted["properties"]["createdTime"], created_time.as_str());

    let patched = sim.arm(Method::PATCH, Some("777"), &token).await;
    assert_eq!(patched.status, StatusCode::OK, "{}", patched.text);
    let patched = patched.json();
    assert_eq!(patched["name"], "777");
    assert_eq!(patched["properties"]["partnerId"], "777");
    assert_eq!(patched["etag"], 3);
    assert_eq!(patched["properties"]["createdTime"], created_time.as_str());

    // A DELETE naming another ID answers 200 but removes nothing.
    let wrong_delete = sim.arm(Method::DELETE, Some("123456"), &token).await;
    assert_eq!(wrong_delete.status, StatusCode::OK);
    assert!(sim.simulator.active_link(TENANT_A, ONE_IN_A).is_some());

    let deleted = sim.arm(Method::DELETE, Some("777"), &token).await;
    assert_eq!(deleted.status, StatusCode::OK);
    assert!(deleted.text.is_empty(), "{:?}", deleted.text);
    let record = sim.simulator.link(TENANT_A, ONE_IN_A).unwrap();
    assert_eq!((record.state.as_str(), record.version), ("Deleted", 4));
    assert!(sim.simulator.links().is_empty());

    assert_eq!(
        sim.arm(Method::GET, None, &token).await.status,
        StatusCode::NOT_FOUND
    );
    let patch_gone = sim.arm(Method::PATCH, Some("777"), &token).await;
    assert_eq!(patch_gone.status, StatusCode::NOT_FOUND);
    assert_eq!(patch_gone.arm_code(), "ManagementPartnerNotFound");
    assert_eq!(
        sim.arm(Method::DELETE, Some("777"), &token).await.status,
        StatusCode::OK
    );

    let relinked = sim.arm(Method::PUT, Some("123456"), &token).await.json();
    assert_eq!(relinked["etag"], 5);
    assert_eq!(relinked["properties"]["state"], "Active");
    assert_eq!(relinked["properties"]["createdTime"], created_time.as_str());

    let methods: Vec<_> = sim
        .simulator
        .requests()
        .into_iter()
        .map(|record| (record.method, record.partner_id, record.status))
        .collect();
    assert_eq!(methods.len(), 13);
    assert_eq!(methods[0], ("GET".to_owned(), None, 404));
    assert_eq!(
        methods[1],
        ("PUT".to_owned(), Some("123456".to_owned()), 200)
    );
}

#[tokio::test]
async fn identities_are_independent_across_principals_and_tenants() {
    let sim = spawn_sim(config()).await;
    let one_in_a = sim.token(TENANT_A, APP_ONE, SECRET_ONE).await;
    let two_in_a = sim.token(TENANT_A, APP_TWO, SECRET_TWO).await;
    let one_in_b = sim.token(TENANT_B, APP_ONE, SECRET_ONE).await;

    assert_eq!(
        sim.arm(Method::PUT, Some("100"), &one_in_a).await.status,
        StatusCode::OK
    );
    assert_eq!(
        sim.arm(Method::PUT, Some("200"), &one_in_b).await.status,
        StatusCode::OK
    );

    // Same tenant, other principal: sees no link and cannot touch APP_ONE's.
    assert_eq!(
        sim.arm(Method::GET, None, &two_in_a).await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        sim.arm(Method::PATCH, Some("300"), &two_in_a).await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        sim.arm(Method::DELETE, Some("100"), &two_in_a).await.status,
        StatusCode::OK
    );

    // Same application, other tenant: its own link, its own version.
    let in_b = sim.arm(Method::GET, None, &one_in_b).await.json();
    assert_eq!(in_b["name"], "200");
    assert_eq!(in_b["properties"]["tenantId"], TENANT_B);
    assert_eq!(in_b["properties"]["objectId"], ONE_IN_B);
    assert_eq!(in_b["etag"], 1);
    assert_eq!(
        sim.arm(Method::DELETE, Some("200"), &one_in_b).await.status,
        StatusCode::OK
    );

    let in_a = sim.arm(Method::GET, None, &one_in_a).await.json();
    assert_eq!(
        (in_a["name"].as_str(), in_a["etag"].as_u64()),
        (Some("100"), Some(1))
    );
    let links = sim.simulator.links();
    assert_eq!(links.len(), 1);
    assert_eq!(
        (links[0].tenant_id.as_str(), links[0].object_id.as_str()),
        (TENANT_A, ONE_IN_A)
    );
}

#[tokio::test]
async fn api_version_is_required() {
    let sim = spawn_sim(config()).await;
    let token = sim.token(TENANT_A, APP_ONE, SECRET_ONE).await;
    let missing = sim
        .send(sim.http.get(sim.url(PARTNERS)).bearer_auth(&token))
        .await;
    assert_eq!(missing.status, StatusCode::BAD_REQUEST);
    assert_eq!(missing.arm_code(), "MissingApiVersionParameter");
    let wrong = sim
        .send(
            sim.http
                .put(sim.url(&format!("{PARTNERS}/123?api-version=2021-01-01")))
                .bearer_auth(&token),
        )
        .await;
    assert_eq!(wrong.status, StatusCode::BAD_REQUEST);
    assert_eq!(wrong.arm_code(), "InvalidApiVersionParameter");
    assert!(sim.simulator.links().is_empty(), "nothing written");
}

#[tokio::test]
async fn arm_requires_a_valid_unexpired_bearer_token_of_this_simulator() {
    let sim = spawn_sim(config()).await;
    let no_header = sim
        .send(sim.http.get(sim.url(&format!("{PARTNERS}?{API}"))))
        .await;
    assert_eq!(no_header.status, StatusCode::UNAUTHORIZED);
    assert_eq!(no_header.arm_code(), "AuthenticationFailed");
    assert!(no_header.header("www-authenticate").is_some());

    let garbage = sim.arm(Method::GET, None, "not-a-jwt").await;
    assert_eq!(garbage.status, StatusCode::UNAUTHORIZED);
    assert_eq!(garbage.arm_code(), "InvalidAuthenticationToken");

    let other_simulator = Simulator::new(config());
    let foreign = other_simulator.issue_token(TENANT_A, ONE_IN_A, APP_ONE);
    let answer = sim.arm(Method::PUT, Some("1"), &foreign).await;
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
    assert_eq!(answer.arm_code(), "InvalidAuthenticationToken");

    let token = sim.token(TENANT_A, APP_ONE, SECRET_ONE).await;
    assert_eq!(
        sim.arm(Method::GET, None, &token).await.status,
        StatusCode::NOT_FOUND
    );
    sim.advance_clock(3600).await;
    let expired = sim.arm(Method::GET, None, &token).await;
    assert_eq!(expired.status, StatusCode::UNAUTHORIZED);
    assert_eq!(expired.arm_code(), "ExpiredAuthenticationToken");
    let fresh = sim.token(TENANT_A, APP_ONE, SECRET_ONE).await;
    assert_eq!(
        sim.arm(Method::GET, None, &fresh).await.status,
        StatusCode::NOT_FOUND
    );

    let statuses: Vec<u16> = sim
        .simulator
        .requests()
        .iter()
        .map(|record| record.status)
        .collect();
    assert_eq!(statuses, [401, 401, 401, 404, 401, 404]);
    assert!(sim.simulator.links().is_empty());
}

#[tokio::test]
async fn every_arm_answer_carries_request_ids_and_rate_limit_headers() {
    let sim = spawn_sim(config()).await;
    let token = sim.token(TENANT_A, APP_ONE, SECRET_ONE).await;
    let correlation = uuid::Uuid::new_v4().to_string();
    let read = sim
        .send(
            sim.http
                .get(sim.url(&format!("{PARTNERS}?{API}")))
                .bearer_auth(&token)
                .header("x-ms-correlation-request-id", &correlation),
        )
        .await;
    assert_eq!(
        read.header("x-ms-correlation-request-id"),
        Some(correlation.as_str())
    );
    let request_id = read.header("x-ms-request-id").expect("x-ms-request-id");
    assert!(uuid::Uuid::try_parse(request_id).is_ok());
    assert_eq!(sim.simulator.requests()[0].request_id, request_id);
    let reads: u64 = read
        .header("x-ms-ratelimit-remaining-tenant-reads")
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..250).contains(&reads), "{reads}");

    let write = sim.arm(Method::PUT, Some("1"), &token).await;
    let writes: u64 = write
        .header("x-ms-ratelimit-remaining-tenant-writes")
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..200).contains(&writes), "{writes}");
    let generated = write.header("x-ms-correlation-request-id").unwrap();
    assert!(uuid::Uuid::try_parse(generated).is_ok());

    let unauthenticated = sim.arm(Method::GET, None, "x").await;
    assert!(unauthenticated.header("x-ms-request-id").is_some());
    assert!(
        unauthenticated
            .header("x-ms-correlation-request-id")
            .is_some()
    );
}

#[tokio::test]
async fn injected_429_throttles_the_identity_and_early_requests_are_violations() {
    let sim = spawn_sim(config()).await;
    let one_in_a = sim.token(TENANT_A, APP_ONE, SECRET_ONE).await;
    let two_in_a = sim.token(TENANT_A, APP_TWO, SECRET_TWO).await;
    let set = sim
        .put_faults(&json!({"default": {"rate_429": 1.0, "retry_after_secs": 30}}))
        .await;
    assert_eq!(set.status, StatusCode::OK, "{}", set.text);

    let throttled = sim.arm(Method::PUT, Some("1"), &one_in_a).await;
    assert_eq!(throttled.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(throttled.header("retry-after"), Some("30"));
    assert_eq!(throttled.arm_code(), "TooManyRequests");
    assert!(
        sim.simulator.throttle_violations().is_empty(),
        "the first 429 is no violation"
    );

    let early = sim.arm(Method::GET, None, &one_in_a).await;
    assert_eq!(early.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(sim.simulator.throttle_violations().len(), 1);

    // Faults off: the pending wait still holds, and an early request restarts it.
    let off = sim.put_faults(&json!({"default": {"rate_429": 0.0}})).await;
    assert_eq!(off.status, StatusCode::OK);
    assert_eq!(
        sim.admin_get("/_sim/faults").await["default"]["rate_429"],
        0.0
    );
    assert_eq!(
        sim.arm(Method::GET, None, &one_in_a).await.status,
        StatusCode::TOO_MANY_REQUESTS
    );
    // Another identity in the same tenant was never throttled.
    assert_eq!(
        sim.arm(Method::GET, None, &two_in_a).await.status,
        StatusCode::NOT_FOUND
    );

    // 20 s later: too early, so the 30 s wait restarts from here.
    sim.advance_clock(20).await;
    assert_eq!(
        sim.arm(Method::GET, None, &one_in_a).await.status,
        StatusCode::TOO_MANY_REQUESTS
    );
    // 31 s after the first 429 but only 11 s after the restart: still too early.
    sim.advance_clock(11).await;
    let restarted = sim.arm(Method::GET, None, &one_in_a).await;
    assert_eq!(restarted.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        restarted.header("retry-after"),
        Some("30"),
        "the announced period"
    );
    sim.advance_clock(31).await;
    assert_eq!(
        sim.arm(Method::PUT, Some("1"), &one_in_a).await.status,
        StatusCode::OK
    );
    assert_eq!(sim.simulator.links().len(), 1);

    let violations = sim.admin_get("/_sim/violations").await;
    let violations = violations.as_array().unwrap();
    assert_eq!(violations.len(), 4);
    for violation in violations {
        assert_eq!(violation["tenant_id"], TENANT_A);
        assert_eq!(violation["object_id"], ONE_IN_A);
        assert_eq!(violation["status"], 429);
        assert_eq!(violation["throttle_violation"], true);
    }
    let requests = sim.simulator.requests();
    assert!(requests[0].fault_injected && !requests[0].throttle_violation);
    assert!(!requests.last().unwrap().fault_injected);
}

#[tokio::test]
async fn injected_server_errors_follow_the_tenant_profile() {
    let sim = spawn_sim(config()).await;
    let in_a = sim.token(TENANT_A, APP_ONE, SECRET_ONE).await;
    let in_b = sim.token(TENANT_B, APP_ONE, SECRET_ONE).await;
    sim.simulator.set_faults(Faults {
        default: FaultProfile::default(),
        per_tenant: [(
            TENANT_A.to_uppercase(),
            FaultProfile {
                rate_5xx: 1.0,
                status_5xx: 502,
                ..FaultProfile::default()
            },
        )]
        .into(),
    });
    let failed = sim.arm(Method::PUT, Some("1"), &in_a).await;
    assert_eq!(failed.status, StatusCode::BAD_GATEWAY);
    assert_eq!(failed.arm_code(), "BadGateway");
    assert!(failed.header("x-ms-request-id").is_some());
    assert!(
        sim.simulator.links().is_empty(),
        "a failed request writes nothing"
    );
    assert_eq!(
        sim.arm(Method::PUT, Some("1"), &in_b).await.status,
        StatusCode::OK
    );

    // The token endpoint is never subject to fault injection.
    sim.simulator.set_faults(Faults::everywhere(FaultProfile {
        rate_429: 1.0,
        rate_5xx: 1.0,
        ..FaultProfile::default()
    }));
    sim.token(TENANT_A, APP_ONE, SECRET_ONE).await;

    let records = sim.simulator.requests();
    assert_eq!((records[0].status, records[0].fault_injected), (502, true));
    assert_eq!((records[1].status, records[1].fault_injected), (200, false));
}

#[tokio::test]
async fn latency_delays_answers() {
    let sim = spawn_sim(config()).await;
    let token = sim.token(TENANT_A, APP_ONE, SECRET_ONE).await;
    sim.simulator.set_faults(Faults::everywhere(FaultProfile {
        latency_ms: 60_000,
        ..FaultProfile::default()
    }));
    let result = sim
        .http
        .get(sim.url(&format!("{PARTNERS}?{API}")))
        .bearer_auth(&token)
        .timeout(Duration::from_millis(200))
        .send()
        .await;
    assert!(result.expect_err("answer held back").is_timeout());
    assert!(sim.simulator.requests().is_empty(), "still in flight");
}

/// `(partnerId, etag)` a GET of the identity's link shows, `None` on 404.
async fn shown_link(sim: &TestSim, token: &str) -> Option<(String, u64)> {
    let answer = sim.arm(Method::GET, None, token).await;
    if answer.status == StatusCode::NOT_FOUND {
        assert_eq!(answer.arm_code(), "ManagementPartnerNotFound");
        return None;
    }
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text);
    let body = answer.json();
    Some((
        body["properties"]["partnerId"].as_str().unwrap().to_owned(),
        body["etag"].as_u64().unwrap(),
    ))
}

#[tokio::test]
async fn writes_become_visible_to_gets_only_after_write_visibility_ms() {
    let sim = spawn_sim(config()).await;
    let in_a = sim.token(TENANT_A, APP_ONE, SECRET_ONE).await;
    let in_b = sim.token(TENANT_B, APP_ONE, SECRET_ONE).await;
    let set = sim
        .put_faults(
            &json!({"per_tenant": {TENANT_A.to_uppercase(): {"write_visibility_ms": 300_000}}}),
        )
        .await;
    assert_eq!(set.status, StatusCode::OK, "{}", set.text);
    assert_eq!(
        sim.admin_get("/_sim/faults").await["per_tenant"][TENANT_A]["write_visibility_ms"],
        300_000
    );

    // The simulator's clock reveals writes (real time would too, later).
    // t = 0: the PUT answers the new link, GETs do not see it yet.
    let put = sim.arm(Method::PUT, Some("1"), &in_a).await;
    assert_eq!(put.status, StatusCode::OK, "{}", put.text);
    assert_eq!(put.json()["properties"]["partnerId"], "1");
    assert_eq!(shown_link(&sim, &in_a).await, None);
    assert_eq!(
        sim.arm(Method::GET, Some("1"), &in_a).await.status,
        StatusCode::NOT_FOUND
    );
    assert!(
        sim.simulator.active_link(TENANT_A, ONE_IN_A).is_some(),
        "stored at once"
    );
    assert_eq!(sim.admin_get("/_sim/links").await[0]["partner_id"], "1");
    // Tenant B has no lag.
    sim.arm(Method::PUT, Some("9"), &in_b).await;
    assert_eq!(shown_link(&sim, &in_b).await, Some(("9".into(), 1)));

    // t = 100 s: a PATCH acts on the stored link, which reads do not show yet.
    sim.advance_clock(100).await;
    assert_eq!(shown_link(&sim, &in_a).await, None);
    let patch = sim.arm(Method::PATCH, Some("2"), &in_a).await;
    assert_eq!(patch.status, StatusCode::OK, "{}", patch.text);
    assert_eq!(patch.json()["etag"], 2);

    // t = 310 s: the PUT is visible, the PATCH (visible at 400 s) is not.
    sim.advance_clock(210).await;
    assert_eq!(shown_link(&sim, &in_a).await, Some(("1".into(), 1)));
    assert_eq!(
        sim.arm(Method::GET, Some("2"), &in_a).await.status,
        StatusCode::NOT_FOUND
    );
    let delete = sim.arm(Method::DELETE, Some("2"), &in_a).await;
    assert_eq!(delete.status, StatusCode::OK);
    assert!(
        sim.simulator
            .links()
            .iter()
            .all(|link| link.tenant_id != TENANT_A)
    );

    // t = 410 s: the PATCH is visible; the DELETE (visible at 610 s) is not.
    sim.advance_clock(100).await;
    assert_eq!(shown_link(&sim, &in_a).await, Some(("2".into(), 2)));
    assert_eq!(
        sim.arm(Method::GET, Some("2"), &in_a).await.status,
        StatusCode::OK
    );

    // t = 610 s: everything is visible.
    sim.advance_clock(200).await;
    assert_eq!(shown_link(&sim, &in_a).await, None);

    // Lag off: a write is visible at once again.
    sim.put_faults(&json!({})).await;
    sim.arm(Method::PUT, Some("3"), &in_a).await;
    assert_eq!(shown_link(&sim, &in_a).await, Some(("3".into(), 4)));
    assert!(sim.simulator.lost_writes().is_empty());
}

#[tokio::test]
async fn lost_writes_answer_200_change_nothing_and_are_logged() {
    let sim = spawn_sim(config()).await;
    let token = sim.token(TENANT_A, APP_ONE, SECRET_ONE).await;
    let set = sim
        .put_faults(&json!({"default": {"rate_lost_write": 1.0}}))
        .await;
    assert_eq!(set.status, StatusCode::OK, "{}", set.text);

    let put = sim.arm(Method::PUT, Some("1"), &token).await;
    assert_eq!(put.status, StatusCode::OK, "{}", put.text);
    let body = put.json();
    assert_eq!(
        (
            body["properties"]["partnerId"].as_str(),
            body["etag"].as_u64()
        ),
        (Some("1"), Some(1)),
        "answered as if it had worked"
    );
    assert_eq!(shown_link(&sim, &token).await, None);
    assert!(sim.simulator.link(TENANT_A, ONE_IN_A).is_none());

    // A link made by someone else: PATCH and DELETE are lost too.
    sim.simulator.seed_link(TENANT_A, ONE_IN_A, "5");
    let patch = sim.arm(Method::PATCH, Some("6"), &token).await;
    assert_eq!(patch.status, StatusCode::OK, "{}", patch.text);
    assert_eq!(patch.json()["properties"]["partnerId"], "6");
    let delete = sim.arm(Method::DELETE, Some("5"), &token).await;
    assert_eq!(delete.status, StatusCode::OK);
    assert_eq!(shown_link(&sim, &token).await, Some(("5".into(), 1)));
    let stored = sim.simulator.active_link(TENANT_A, ONE_IN_A).unwrap();
    assert_eq!((stored.partner_id.as_str(), stored.version), ("5", 1));

    // A write that fails is answered as usual and is not lost.
    let refused = sim.arm(Method::PUT, Some("x1"), &token).await;
    assert_eq!(refused.status, StatusCode::BAD_REQUEST);

    let requests = sim.admin_get("/_sim/requests").await;
    let lost: Vec<(&str, bool)> = requests
        .as_array()
        .unwrap()
        .iter()
        .map(|record| {
            (
                record["method"].as_str().unwrap(),
                record["lost"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        lost,
        [
            ("PUT", true),
            ("GET", false),
            ("PATCH", true),
            ("DELETE", true),
            ("GET", false),
            ("PUT", false),
        ]
    );
    let counted = sim.simulator.lost_writes();
    assert_eq!(counted.len(), 3);
    assert!(
        counted
            .iter()
            .all(|record| record.status == 200 && !record.fault_injected)
    );

    // Rate 0: writes apply again.
    sim.put_faults(&json!({"default": {"rate_lost_write": 0.0}}))
        .await;
    sim.arm(Method::DELETE, Some("5"), &token).await;
    assert_eq!(shown_link(&sim, &token).await, None);
    assert_eq!(sim.simulator.lost_writes().len(), 3);
}

#[tokio::test]
async fn lost_writes_follow_the_seed() {
    async fn lost_pattern() -> Vec<bool> {
        let sim = spawn_sim(SimConfig {
            faults: Faults::everywhere(FaultProfile {
                rate_lost_write: 0.5,
                ..FaultProfile::default()
            }),
            ..config()
        })
        .await;
        let token = sim.token(TENANT_A, APP_ONE, SECRET_ONE).await;
        for _ in 0..32 {
            assert_eq!(
                sim.arm(Method::PUT, Some("1"), &token).await.status,
                StatusCode::OK
            );
        }
        sim.simulator
            .requests()
            .into_iter()
            .map(|record| record.lost)
            .collect()
    }
    let first = lost_pattern().await;
    assert!(first.contains(&true) && first.contains(&false), "{first:?}");
    assert_eq!(first, lost_pattern().await);
}

#[tokio::test]
async fn a_deleted_identity_gets_700016_while_its_client_keeps_its_other_tenants() {
    let sim = spawn_sim(config()).await;
    // Tenant B's only identity, with a token issued before the deletion.
    let issued_before = sim.token(TENANT_B, APP_ONE, SECRET_ONE).await;
    sim.simulator.seed_link(TENANT_A, TWO_IN_A, "4242");

    let deleted = sim
        .send(sim.http.delete(sim.url(&format!(
            "/_sim/identities/{}/{}",
            TENANT_B.to_uppercase(),
            ONE_IN_B
        ))))
        .await;
    assert_eq!(deleted.status, StatusCode::OK, "{}", deleted.text);
    assert_eq!(
        deleted.json(),
        json!({"tenant_id": TENANT_B, "object_id": ONE_IN_B, "client_ids": [APP_ONE]})
    );

    let refused = sim
        .secret_token_request(TENANT_B, APP_ONE, SECRET_ONE)
        .await;
    assert_eq!(refused.status, StatusCode::BAD_REQUEST, "{}", refused.text);
    assert_eq!(
        aad_error(&refused),
        ("unauthorized_client".to_owned(), 700_016),
        "the tenant still exists: not 90002"
    );
    let description = refused.json()["error_description"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        description.starts_with(&format!(
            "AADSTS700016: Application with identifier '{APP_ONE}' was not found in the \
             directory '{TENANT_B}'."
        )),
        "{description}"
    );
    // The same application in tenant A still gets tokens.
    let claims = jwt_claims(&sim.token(TENANT_A, APP_ONE, SECRET_ONE).await);
    assert_eq!(claims["oid"], ONE_IN_A);
    let codes: Vec<Option<u32>> = sim
        .simulator
        .token_requests()
        .iter()
        .map(|record| record.error_code)
        .collect();
    assert_eq!(codes, [None, Some(700_016), None]);

    // A token issued before holds until it expires, as issued tokens do.
    assert_eq!(shown_link(&sim, &issued_before).await, None);

    // In-process, for an identity with a link: the link stays.
    assert_eq!(
        sim.simulator.delete_identity(TENANT_A, TWO_IN_A),
        vec![APP_TWO.to_owned()]
    );
    let refused = sim
        .secret_token_request(TENANT_A, APP_TWO, SECRET_TWO)
        .await;
    assert_eq!(
        aad_error(&refused),
        ("unauthorized_client".to_owned(), 700_016)
    );
    let links = sim.admin_get("/_sim/links").await;
    assert_eq!(links[0]["object_id"], TWO_IN_A);
    assert_eq!(links[0]["state"], "Active");
    let clients = sim.admin_get("/_sim/clients").await;
    let two = clients
        .as_array()
        .unwrap()
        .iter()
        .find(|client| client["client_id"] == APP_TWO)
        .unwrap();
    assert_eq!(two["identities"], json!({}), "gone from its client");

    // Deleting again finds nothing; a malformed identity is refused.
    let again = sim
        .send(
            sim.http
                .delete(sim.url(&format!("/_sim/identities/{TENANT_B}/{ONE_IN_B}"))),
        )
        .await;
    assert_eq!(again.status, StatusCode::NOT_FOUND, "{}", again.text);
    let malformed = sim
        .send(sim.http.delete(sim.url("/_sim/identities/contoso/x")))
        .await;
    assert_eq!(
        malformed.status,
        StatusCode::BAD_REQUEST,
        "{}",
        malformed.text
    );

    sim.advance_clock(3600).await;
    let expired = sim.arm(Method::GET, None, &issued_before).await;
    assert_eq!(expired.status, StatusCode::UNAUTHORIZED);
    assert_eq!(expired.arm_code(), "ExpiredAuthenticationToken");

    // Registering the identity again restores it.
    sim.simulator.add_client(
        SimClient::with_secret(APP_ONE, SECRET_ONE)
            .identity(TENANT_A, ONE_IN_A)
            .identity(TENANT_B, ONE_IN_B),
    );
    sim.token(TENANT_B, APP_ONE, SECRET_ONE).await;
}

#[tokio::test]
async fn malformed_or_unknown_partner_ids_are_partner_id_invalid() {
    let sim = spawn_sim(SimConfig {
        valid_partner_ids: Some(BTreeSet::from(["123456".to_owned(), "777".to_owned()])),
        ..config()
    })
    .await;
    let token = sim.token(TENANT_A, APP_ONE, SECRET_ONE).await;
    for id in ["12ab", "12345678901", "-1"] {
        let answer = sim.arm(Method::PUT, Some(id), &token).await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{id}");
        assert_eq!(answer.arm_code(), "PartnerIdInvalid", "{id}");
        let get = sim.arm(Method::GET, Some(id), &token).await;
        assert_eq!(get.arm_code(), "PartnerIdInvalid", "{id}");
    }
    let unknown = sim.arm(Method::PUT, Some("999"), &token).await;
    assert_eq!(unknown.status, StatusCode::BAD_REQUEST);
    assert_eq!(unknown.arm_code(), "PartnerIdInvalid");
    assert_eq!(
        sim.arm(Method::PUT, Some("123456"), &token).await.status,
        StatusCode::OK
    );
    let patch_unknown = sim.arm(Method::PATCH, Some("999"), &token).await;
    assert_eq!(patch_unknown.arm_code(), "PartnerIdInvalid");
    assert_eq!(
        sim.arm(Method::PATCH, Some("777"), &token).await.status,
        StatusCode::OK
    );
    assert_eq!(sim.simulator.links()[0].partner_id, "777");
}

#[tokio::test]
async fn admin_api_seeds_links_and_reports_state() {
    let sim = spawn_sim(config()).await;
    assert_eq!(sim.admin_get("/_sim/healthz").await["status"], "ok");
    let seeded = sim
        .send(sim.http.post(sim.url("/_sim/links")).json(&json!({
            "tenant_id": TENANT_B.to_uppercase(), "object_id": ONE_IN_B, "partner_id": "4242"
        })))
        .await;
    assert_eq!(seeded.status, StatusCode::CREATED, "{}", seeded.text);
    assert_eq!(seeded.json()["tenant_id"], TENANT_B);

    let token = sim.token(TENANT_B, APP_ONE, SECRET_ONE).await;
    let shown = sim.arm(Method::GET, None, &token).await.json();
    assert_eq!(
        (shown["name"].as_str(), shown["etag"].as_u64()),
        (Some("4242"), Some(1))
    );
    sim.arm(Method::DELETE, Some("4242"), &token).await;

    assert_eq!(sim.admin_get("/_sim/links").await, json!([]));
    let all = sim.admin_get("/_sim/links?state=all").await;
    assert_eq!(all[0]["state"], "Deleted");
    assert_eq!(all[0]["version"], 2);

    let requests = sim.admin_get("/_sim/requests").await;
    assert_eq!(requests[0]["method"], "GET");
    assert_eq!(requests[1]["method"], "DELETE");
    assert_eq!(requests[1]["partner_id"], "4242");
    assert_eq!(requests[1]["path"], format!("{PARTNERS}/4242"));
    assert_eq!(
        sim.admin_get("/_sim/token-requests").await[0]["credential"],
        "secret"
    );

    let clients = sim.admin_get("/_sim/clients").await.to_string();
    assert!(
        clients.contains(APP_ONE) && !clients.contains(SECRET_ONE),
        "{clients}"
    );

    for (path, body) in [
        ("/_sim/faults", json!({"default": {"rate_429": 2.0}})),
        ("/_sim/faults", json!({"default": {"status_5xx": 404}})),
        ("/_sim/faults", json!({"default": {"rate_lost_write": 1.5}})),
        (
            "/_sim/faults",
            json!({"per_tenant": {TENANT_A: {"write_visibility_ms": 86_400_001u64}}}),
        ),
    ] {
        let refused = sim.send(sim.http.put(sim.url(path)).json(&body)).await;
        assert_eq!(refused.status, StatusCode::BAD_REQUEST, "{body}");
    }
    let bad_link = sim
        .send(sim.http.post(sim.url("/_sim/links")).json(&json!({
            "tenant_id": TENANT_A, "object_id": ONE_IN_A, "partner_id": "x"
        })))
        .await;
    assert_eq!(bad_link.status, StatusCode::BAD_REQUEST);
    let bad_client = sim
        .send(sim.http.post(sim.url("/_sim/clients")).json(&json!({
            "client_id": "c", "certificate_pem": "not a certificate"
        })))
        .await;
    assert_eq!(bad_client.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        sim.send(sim.http.get(sim.url("/_sim/nothing")))
            .await
            .status,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn shutdown_stops_serving() {
    let sim = spawn_sim(config()).await;
    let url = sim.url("/_sim/healthz");
    assert_eq!(
        sim.http.get(&url).send().await.unwrap().status(),
        StatusCode::OK
    );
    sim.handle.shutdown().await;
    let fresh = reqwest::Client::new();
    assert!(fresh.get(&url).send().await.is_err());
}

#[tokio::test]
async fn run_returns_when_shutdown_resolves_and_refuses_bad_config() {
    palworker_sim::run("127.0.0.1:0".parse().unwrap(), config(), async {})
        .await
        .expect("clean stop");
    let bad = SimConfig {
        faults: Faults::everywhere(FaultProfile {
            rate_5xx: -1.0,
            ..FaultProfile::default()
        }),
        ..config()
    };
    assert!(
        palworker_sim::run("127.0.0.1:0".parse().unwrap(), bad, async {})
            .await
            .is_err()
    );
}
