//! Org members through GraphQL: admins add, re-role and remove members;
//! the last admin member is protected; operators and viewers may not
//! manage or even list members; another org sees none of them; every
//! change is audited.

use std::time::{Duration, Instant};

use honeycell_auth::Role;
use honeycell_tests::*;
use serde_json::{Value, json};

const ADD: &str =
    "mutation($e: String!, $r: Role!) { addMember(email: $e, role: $r) { userId email role } }";
const LIST: &str = "{ members { userId email role } }";
const SET: &str =
    "mutation($u: String!, $r: Role!) { setMemberRole(userId: $u, role: $r) { userId role } }";
const REMOVE: &str = "mutation($u: String!) { removeMember(userId: $u) }";

fn err(body: &Value) -> (u64, String) {
    let e = &body["errors"][0]["extensions"];
    (
        e["status"].as_u64().unwrap_or(0),
        e["code"].as_str().unwrap_or_default().to_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admins_manage_members_within_their_org() {
    let server = TestServer::builder().cells(2).start().await;
    let admin = server.token("acme", Role::Admin);

    let (_, body) = server
        .graphql(&admin, ADD, json!({"e": "Ada@Example.com", "r": "ADMIN"}))
        .await;
    let ada = body["data"]["addMember"].clone();
    assert_eq!(ada["email"], "ada@example.com", "{body}");
    assert_eq!(ada["role"], "admin");
    let ada_id = ada["userId"].as_str().expect("id").to_owned();
    let (_, body) = server
        .graphql(&admin, ADD, json!({"e": "bob@example.com", "r": "VIEWER"}))
        .await;
    let bob_id = body["data"]["addMember"]["userId"]
        .as_str()
        .expect("id")
        .to_owned();

    // The same person in another org is the same user, with its own role.
    let bravo = server.token("bravo", Role::Admin);
    let (_, body) = server
        .graphql(
            &bravo,
            ADD,
            json!({"e": "ada@example.com", "r": "OPERATOR"}),
        )
        .await;
    assert_eq!(
        body["data"]["addMember"]["userId"],
        ada_id.as_str(),
        "{body}"
    );
    assert_eq!(body["data"]["addMember"]["role"], "operator");

    let (_, body) = server.graphql(&admin, LIST, json!({})).await;
    let members = body["data"]["members"].as_array().expect("members").clone();
    assert_eq!(members.len(), 2, "{body}");
    let (_, body) = server.graphql(&bravo, LIST, json!({})).await;
    let theirs = body["data"]["members"].as_array().expect("members").clone();
    assert_eq!(theirs.len(), 1, "bravo sees only its own member: {body}");
    assert!(!body.to_string().contains("bob@example.com"));

    // Re-role, and the last-admin guard.
    let (_, body) = server
        .graphql(&admin, SET, json!({"u": bob_id, "r": "OPERATOR"}))
        .await;
    assert_eq!(body["data"]["setMemberRole"]["role"], "operator", "{body}");
    let (_, body) = server
        .graphql(&admin, SET, json!({"u": ada_id, "r": "VIEWER"}))
        .await;
    assert_eq!(err(&body), (409, "last_admin".to_owned()), "{body}");
    let (_, body) = server.graphql(&admin, REMOVE, json!({"u": ada_id})).await;
    assert_eq!(err(&body), (409, "last_admin".to_owned()), "{body}");
    // Another org's member, or nobody: not found.
    let (_, body) = server.graphql(&bravo, REMOVE, json!({"u": bob_id})).await;
    assert_eq!(err(&body), (404, "member_not_found".to_owned()), "{body}");
    let (_, body) = server.graphql(&admin, REMOVE, json!({"u": bob_id})).await;
    assert_eq!(body["data"]["removeMember"], true, "{body}");
    let (_, body) = server.graphql(&admin, REMOVE, json!({"u": bob_id})).await;
    assert_eq!(err(&body).0, 404, "{body}");

    // Bad input.
    let (_, body) = server
        .graphql(&admin, ADD, json!({"e": "not an address", "r": "VIEWER"}))
        .await;
    assert_eq!(err(&body), (400, "invalid_email".to_owned()), "{body}");

    // Only admins hold users:read / users:write.
    for role in [Role::Operator, Role::Viewer] {
        let t = server.token("acme", role);
        let (_, body) = server.graphql(&t, LIST, json!({})).await;
        assert_eq!(
            body["errors"][0]["extensions"]["permission"], "users:read",
            "{role}: {body}"
        );
        let (_, body) = server
            .graphql(&t, ADD, json!({"e": "eve@example.com", "r": "ADMIN"}))
            .await;
        assert_eq!(
            body["errors"][0]["extensions"]["permission"], "users:write",
            "{role}: {body}"
        );
    }

    // Audited.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (_, body) = server
            .graphql(
                &admin,
                "{ auditLog(first: 100) { entries { action resource } } }",
                json!({}),
            )
            .await;
        let actions: Vec<String> = body["data"]["auditLog"]["entries"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .map(|e| e["action"].as_str().unwrap_or_default().to_owned())
            .collect();
        let has = |a: &str| actions.iter().any(|x| x == a);
        if has("user.add") && has("user.role") && has("user.remove") {
            break;
        }
        assert!(Instant::now() < deadline, "{actions:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
