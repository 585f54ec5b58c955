//! Matching and precedence, on the cases of the Gateway API conformance suite
//! (HTTPRouteMatching, HTTPRouteMatchingAcrossRoutes, HTTPRouteHeaderMatching,
//! HTTPRouteQueryParamMatching, HTTPRouteMethodMatching, HTTPRouteRewritePath,
//! HTTPRouteRedirect*) and the path-prefix rules of the spec.

use http::{HeaderMap, HeaderValue, Method, Request, StatusCode};
use serde_json::{Value, json};
use trellis_model::Route;

use super::*;

/// Routes from JSON (the config's own shape); each rule's backend names the rule: its one
/// backend is `"<route>.<rule>"` unless it gives its own.
fn table(routes: Value) -> RouteTable<String> {
    let mut routes: Vec<Route> = serde_json::from_value(routes).expect("routes");
    for (i, route) in routes.iter_mut().enumerate() {
        for (j, rule) in route.rules.iter_mut().enumerate() {
            if rule.backends.is_empty() && !has_redirect(rule) {
                rule.backends.push(RouteBackend {
                    service: format!("{i}.{j}"),
                    namespace: None,
                    port: 80,
                    weight: 1,
                });
            }
        }
    }
    let refs: Vec<&Route> = routes.iter().collect();
    RouteTable::build("test", &refs, |_, name, _| Some(name.to_string())).expect("builds")
}

fn has_redirect(rule: &RouteRule) -> bool {
    rule.filters
        .iter()
        .any(|f| matches!(f, RouteFilter::RequestRedirect(_)))
}

fn route(rules: Value) -> Value {
    json!({ "name": "r", "rules": rules })
}

/// Which backend a request reaches: `Some("route.rule")`, or `None` for a 404.
fn hit(
    table: &RouteTable<String>,
    method: &str,
    uri: &str,
    headers: &[(&str, &str)],
) -> Option<String> {
    let mut map = HeaderMap::new();
    for (name, value) in headers {
        map.append(
            HeaderName::from_bytes(name.as_bytes()).unwrap(),
            HeaderValue::from_str(value).unwrap(),
        );
    }
    let method = Method::from_bytes(method.as_bytes()).unwrap();
    let uri: Uri = uri.parse().unwrap();
    table
        .find(&method, &uri, &map)
        .and_then(|r| r.pick().cloned())
}

fn get(table: &RouteTable<String>, uri: &str) -> Option<String> {
    hit(table, "GET", uri, &[])
}

fn prefix(value: &str) -> Value {
    json!({ "path": { "type": "prefix", "value": value } })
}

fn exact(value: &str) -> Value {
    json!({ "path": { "type": "exact", "value": value } })
}

#[test]
fn a_prefix_matches_whole_path_segments() {
    let t = table(json!([route(json!([{ "matches": [prefix("/foo")] }]))]));
    for path in [
        "/foo",
        "/foo/",
        "/foo/bar",
        "/foo/bar/baz",
        "/foo?x=1",
        "/foo/?x=1",
    ] {
        assert_eq!(get(&t, path).as_deref(), Some("0.0"), "{path}");
    }
    for path in ["/foobar", "/fo", "/", "/bar/foo", "/Foo"] {
        assert_eq!(get(&t, path), None, "{path}");
    }
    // A trailing slash in the prefix is ignored: `/foo/` matches `/foo` too.
    let t = table(json!([route(json!([{ "matches": [prefix("/foo/")] }]))]));
    for path in ["/foo", "/foo/", "/foo/bar"] {
        assert_eq!(get(&t, path).as_deref(), Some("0.0"), "{path}");
    }
    assert_eq!(get(&t, "/foobar"), None);
    // `/` matches every path.
    let t = table(json!([route(json!([{ "matches": [prefix("/")] }]))]));
    for path in ["/", "/a", "/a/b/c?d"] {
        assert_eq!(get(&t, path).as_deref(), Some("0.0"), "{path}");
    }
    // Absolute-form targets match on their path.
    assert_eq!(get(&t, "http://reviews.test").as_deref(), Some("0.0"));
}

#[test]
fn an_exact_path_is_the_whole_path_and_nothing_else() {
    let t = table(json!([route(json!([{ "matches": [exact("/foo")] }]))]));
    assert_eq!(get(&t, "/foo").as_deref(), Some("0.0"));
    assert_eq!(
        get(&t, "/foo?q=1").as_deref(),
        Some("0.0"),
        "the query is not the path"
    );
    for path in ["/foo/", "/foo/bar", "/fo", "/foobar", "/FOO"] {
        assert_eq!(get(&t, path), None, "{path}");
    }
}

#[test]
fn exact_beats_prefix_and_the_longest_prefix_wins_whatever_the_order() {
    // HTTPRouteMatching and HTTPRouteMatchingAcrossRoutes: the less specific first.
    let t = table(json!([
        route(json!([{ "matches": [prefix("/")] }, { "matches": [prefix("/v2")] }])),
        route(
            json!([{ "matches": [prefix("/v2/example")] }, { "matches": [exact("/v2/example")] }])
        ),
    ]));
    assert_eq!(get(&t, "/").as_deref(), Some("0.0"));
    assert_eq!(get(&t, "/example").as_deref(), Some("0.0"));
    assert_eq!(get(&t, "/v2").as_deref(), Some("0.1"));
    assert_eq!(get(&t, "/v2/").as_deref(), Some("0.1"));
    assert_eq!(
        get(&t, "/v2example").as_deref(),
        Some("0.0"),
        "not a segment of /v2"
    );
    assert_eq!(
        get(&t, "/v2/example").as_deref(),
        Some("1.1"),
        "exact first"
    );
    assert_eq!(get(&t, "/v2/example/more").as_deref(), Some("1.0"));
}

#[test]
fn prefix_then_regex_then_no_path() {
    let t = table(json!([route(json!([
        { "matches": [{}] },
        { "matches": [{ "path": { "type": "regex", "value": "/items/[0-9]+" } }] },
        { "matches": [prefix("/items/42")] },
    ]))]));
    assert_eq!(
        get(&t, "/items/42").as_deref(),
        Some("0.2"),
        "a prefix before a regex"
    );
    assert_eq!(get(&t, "/items/7").as_deref(), Some("0.1"));
    assert_eq!(
        get(&t, "/items/7x").as_deref(),
        Some("0.0"),
        "a regex matches the whole path"
    );
    assert_eq!(get(&t, "/other").as_deref(), Some("0.0"));
    // But the Gateway API's default match, prefix `/`, is a prefix: it beats a regex.
    let t = table(json!([route(json!([
        { "matches": [{ "path": { "type": "regex", "value": "/items/.*" } }] },
        { "matches": [prefix("/")] },
    ]))]));
    assert_eq!(get(&t, "/items/7").as_deref(), Some("0.1"));
}

#[test]
fn then_a_method_then_more_headers_then_more_query_parameters() {
    let t = table(json!([route(json!([
        { "matches": [{ "path": { "type": "prefix", "value": "/" } }] },
        { "matches": [{ "path": { "type": "prefix", "value": "/" },
                        "headers": [{ "name": "version", "value": "one" }] }] },
        { "matches": [{ "path": { "type": "prefix", "value": "/" },
                        "headers": [{ "name": "version", "value": "one" }, { "name": "color", "value": "blue" }] }] },
        { "matches": [{ "path": { "type": "prefix", "value": "/" }, "method": "POST" }] },
        { "matches": [{ "path": { "type": "prefix", "value": "/" },
                        "headers": [{ "name": "version", "value": "one" }],
                        "query_params": [{ "name": "animal", "value": "whale" }] }] },
    ]))]));
    let h = |headers: &[(&str, &str)], method: &str, uri: &str| hit(&t, method, uri, headers);
    assert_eq!(h(&[], "GET", "/").as_deref(), Some("0.0"));
    assert_eq!(h(&[("version", "one")], "GET", "/").as_deref(), Some("0.1"));
    assert_eq!(
        h(&[("version", "one"), ("color", "blue")], "GET", "/").as_deref(),
        Some("0.2"),
        "two headers before one"
    );
    assert_eq!(
        h(&[("version", "one"), ("color", "blue")], "POST", "/").as_deref(),
        Some("0.3"),
        "a method before any number of headers"
    );
    assert_eq!(
        h(&[("version", "one")], "GET", "/?animal=whale").as_deref(),
        Some("0.4"),
        "one header and a query parameter before one header"
    );
    assert_eq!(
        h(
            &[("version", "one"), ("color", "blue")],
            "GET",
            "/?animal=whale"
        )
        .as_deref(),
        Some("0.2"),
        "more headers before query parameters"
    );
    // The path comes before all of them.
    let t = table(json!([route(json!([
        { "matches": [{ "path": { "type": "prefix", "value": "/" }, "method": "GET",
                        "headers": [{ "name": "version", "value": "one" }] }] },
        { "matches": [prefix("/v2")] },
    ]))]));
    assert_eq!(
        hit(&t, "GET", "/v2/x", &[("version", "one")]).as_deref(),
        Some("0.1")
    );
}

#[test]
fn ties_go_to_the_first_route_then_the_first_rule() {
    let t = table(json!([
        route(json!([{ "matches": [prefix("/a")] }, { "matches": [prefix("/a")] }])),
        route(json!([{ "matches": [prefix("/a")] }])),
    ]));
    assert_eq!(get(&t, "/a").as_deref(), Some("0.0"));
    // A rule's several matches are each ranked on their own: the more specific one wins for
    // the rule.
    let t = table(json!([
        route(json!([{ "matches": [prefix("/")] }])),
        route(json!([{ "matches": [prefix("/x"), exact("/y")] }])),
    ]));
    assert_eq!(get(&t, "/y").as_deref(), Some("1.0"));
    assert_eq!(get(&t, "/x/1").as_deref(), Some("1.0"));
    assert_eq!(get(&t, "/z").as_deref(), Some("0.0"));
}

#[test]
fn a_rule_without_matches_matches_everything_last() {
    let t = table(json!([route(json!([{}, { "matches": [exact("/only")] }]))]));
    assert_eq!(get(&t, "/only").as_deref(), Some("0.1"));
    assert_eq!(get(&t, "/anything").as_deref(), Some("0.0"));
    assert_eq!(hit(&t, "DELETE", "/x", &[]).as_deref(), Some("0.0"));
}

#[test]
fn header_matches() {
    let t = table(json!([route(json!([
        { "matches": [{ "headers": [{ "name": "X-Version", "value": "Two" }] }] },
        { "matches": [{ "headers": [{ "name": "x-user", "type": "regex", "value": "(?i)ali.*" }] }] },
        { "matches": [{ "headers": [{ "name": "accept", "value": "a,b" }] }] },
    ]))]));
    let h = |headers: &[(&str, &str)]| hit(&t, "GET", "/", headers);
    assert_eq!(
        h(&[("x-version", "Two")]).as_deref(),
        Some("0.0"),
        "names ignore case"
    );
    assert_eq!(h(&[("X-VERSION", "Two")]).as_deref(), Some("0.0"));
    assert_eq!(h(&[("x-version", "two")]), None, "values do not");
    assert_eq!(h(&[("x-version", "Two ")]), None);
    assert_eq!(h(&[("x-user", "Alice")]).as_deref(), Some("0.1"));
    assert_eq!(
        h(&[("x-user", "bob alice")]),
        None,
        "a regex matches the whole value"
    );
    assert_eq!(
        h(&[("accept", "a"), ("accept", "b")]).as_deref(),
        Some("0.2"),
        "repeated: joined with ,"
    );
    assert_eq!(h(&[("accept", "a")]), None);
    assert_eq!(h(&[]), None, "an absent header never matches");
}

#[test]
fn query_parameter_matches() {
    let t = table(json!([route(json!([
        { "matches": [{ "query_params": [{ "name": "animal", "value": "whale" }, { "name": "color", "value": "blue" }] }] },
        { "matches": [{ "query_params": [{ "name": "animal", "value": "whale" }] }] },
        { "matches": [{ "query_params": [{ "name": "q", "type": "regex", "value": "[a-c]+ d" }] }] },
    ]))]));
    assert_eq!(get(&t, "/?animal=whale").as_deref(), Some("0.1"));
    assert_eq!(get(&t, "/?color=blue&animal=whale").as_deref(), Some("0.0"));
    assert_eq!(get(&t, "/?animal=dolphin"), None);
    assert_eq!(get(&t, "/?Animal=whale"), None, "names are case-sensitive");
    assert_eq!(
        get(&t, "/?animal=whale&animal=dolphin").as_deref(),
        Some("0.1"),
        "the first value counts"
    );
    assert_eq!(get(&t, "/?animal=dolphin&animal=whale"), None);
    assert_eq!(
        get(&t, "/?%61nimal=wh%61le").as_deref(),
        Some("0.1"),
        "percent-decoded"
    );
    assert_eq!(get(&t, "/?q=abc%20d").as_deref(), Some("0.2"));
    assert_eq!(get(&t, "/?animal"), None);
    assert_eq!(get(&t, "/"), None);
}

#[test]
fn method_matches() {
    let t = table(json!([route(json!([
        { "matches": [{ "method": "POST" }] },
        { "matches": [{ "method": "GET" }] },
    ]))]));
    assert_eq!(hit(&t, "POST", "/", &[]).as_deref(), Some("0.0"));
    assert_eq!(hit(&t, "GET", "/x", &[]).as_deref(), Some("0.1"));
    assert_eq!(hit(&t, "HEAD", "/", &[]), None);
}

#[test]
fn grpc_methods_as_compiled_paths() {
    // What compile makes of GRPCRoute method matches.
    let t = table(json!([route(json!([
        { "matches": [{}] },
        { "matches": [{ "path": { "type": "regex", "value": "/[^/]+/List" } }] },
        { "matches": [prefix("/shop.v1.Reviews")] },
        { "matches": [exact("/shop.v1.Reviews/Get")] },
    ]))]));
    assert_eq!(get(&t, "/shop.v1.Reviews/Get").as_deref(), Some("0.3"));
    assert_eq!(
        get(&t, "/shop.v1.Reviews/List").as_deref(),
        Some("0.2"),
        "the service before a method alone"
    );
    assert_eq!(get(&t, "/shop.v1.Ratings/List").as_deref(), Some("0.1"));
    assert_eq!(get(&t, "/shop.v1.ReviewsAdmin/Get").as_deref(), Some("0.0"));
}

#[test]
fn weights_pick_backends_and_all_zero_is_none() {
    let t = table(json!([route(json!([
        { "matches": [exact("/split")], "backends": [
            { "service": "v1", "port": 80, "weight": 90 },
            { "service": "v2", "port": 80, "weight": 10 } ] },
        { "matches": [exact("/none")], "backends": [
            { "service": "v1", "port": 80, "weight": 0 } ] },
    ]))]));
    let v2 = (0..1000)
        .filter(|_| get(&t, "/split").as_deref() == Some("v2"))
        .count();
    assert_eq!(v2, 100);
    let uri: Uri = "/none".parse().unwrap();
    let rule = t
        .find(&Method::GET, &uri, &HeaderMap::new())
        .expect("the rule matches");
    assert_eq!(rule.pick(), None, "matched, but nowhere to go: a 500");
}

#[test]
fn backends_resolve_in_the_services_namespace_unless_given() {
    let routes: Vec<Route> = serde_json::from_value(json!([route(json!([{ "backends": [
        { "service": "a", "port": 80 },
        { "service": "b", "namespace": "other", "port": 8080 },
    ] }]))]))
    .unwrap();
    let refs: Vec<&Route> = routes.iter().collect();
    let mut seen = Vec::new();
    RouteTable::build("shop", &refs, |ns, name, port| {
        seen.push(format!("{ns}/{name}:{port}"));
        Some(())
    })
    .unwrap();
    assert_eq!(seen, ["shop/a:80", "other/b:8080"]);
    let error =
        RouteTable::build("shop", &refs, |_, name, _| (name == "a").then_some(())).unwrap_err();
    assert_eq!(
        error.to_string(),
        "r: backend b in namespace other, port 8080, is not a service of this config"
    );
}

#[test]
fn a_regex_the_engine_refuses_is_an_error_at_build() {
    let routes: Vec<Route> = serde_json::from_value(json!([route(json!([{ "matches": [
        { "headers": [{ "name": "x", "type": "regex", "value": "[a-z]{1000}{1000}" }] }
    ] }]))]))
    .unwrap();
    let refs: Vec<&Route> = routes.iter().collect();
    let error = RouteTable::build("shop", &refs, |_, _, _| Some(())).unwrap_err();
    assert!(
        error.to_string().starts_with(
            "r: header value \"[a-z]{1000}{1000}\" is not a regular expression the proxy can use"
        ),
        "{error}"
    );
}

// Filters.

fn rule_for<'t>(t: &'t RouteTable<String>, uri: &str) -> &'t Rule<String> {
    let uri: Uri = uri.parse().unwrap();
    t.find(&Method::GET, &uri, &HeaderMap::new())
        .expect("a rule")
}

/// The path a request to `uri` is forwarded with, after the rule's rewrite.
fn rewritten(t: &RouteTable<String>, uri: &str) -> String {
    let mut req = Request::get(uri).body(()).unwrap();
    rule_for(t, uri).edit_request(&mut req);
    req.uri().to_string()
}

#[test]
fn prefix_replacement_follows_the_gateway_api_table() {
    // (request path, prefix matched, replacement, forwarded path)
    let cases = [
        ("/foo/bar", "/foo", "/xyz", "/xyz/bar"),
        ("/foo/bar", "/foo", "/xyz/", "/xyz/bar"),
        ("/foo/bar", "/foo/", "/xyz", "/xyz/bar"),
        ("/foo/bar", "/foo/", "/xyz/", "/xyz/bar"),
        ("/foo", "/foo", "/xyz", "/xyz"),
        ("/foo/", "/foo", "/xyz", "/xyz/"),
        ("/foo/bar", "/foo", "/", "/bar"),
        ("/foo/", "/foo", "/", "/"),
        ("/foo", "/foo", "/", "/"),
        ("/prefix/one/two", "/prefix/one", "/one", "/one/two"),
        ("/strip-prefix/three", "/strip-prefix", "/", "/three"),
        ("/any/path", "/", "/new", "/new/any/path"),
        ("/foo/bar?x=1&y", "/foo", "/xyz", "/xyz/bar?x=1&y"),
    ];
    for (path, matched, replacement, want) in cases {
        let t = table(json!([route(json!([{
            "matches": [prefix(matched)],
            "filters": [{ "url_rewrite": { "path": { "replace_prefix_match": replacement } } }],
        }]))]));
        assert_eq!(
            rewritten(&t, path),
            want,
            "{path} with {matched} -> {replacement}"
        );
    }
    let t = table(json!([route(json!([{
        "matches": [prefix("/full")],
        "filters": [{ "url_rewrite": { "path": { "replace_full_path": "/one" } } }],
    }]))]));
    assert_eq!(rewritten(&t, "/full/one/two?q=1"), "/one?q=1");
}

#[test]
fn a_host_rewrite_changes_authority_and_host() {
    let t = table(json!([route(json!([{
        "filters": [{ "url_rewrite": { "hostname": "internal.example" } }],
    }]))]));
    // HTTP/2 and absolute-form: the URI's authority.
    let mut req = Request::get("http://reviews.test:9080/a?b")
        .body(())
        .unwrap();
    rule_for(&t, "/a").edit_request(&mut req);
    assert_eq!(req.uri().to_string(), "http://internal.example/a?b");
    assert_eq!(req.headers().get("host"), None);
    // Origin-form HTTP/1.1: the Host header.
    let mut req = Request::get("/a")
        .header("host", "reviews.test")
        .body(())
        .unwrap();
    rule_for(&t, "/a").edit_request(&mut req);
    assert_eq!(req.uri().to_string(), "/a");
    assert_eq!(req.headers()["host"], "internal.example");
}

#[test]
fn header_modifiers_set_add_and_remove() {
    // HTTPRouteRequestHeaderModifier's case.
    let t = table(json!([route(json!([{
        "filters": [
            { "request_header_modifier": {
                "set": [{ "name": "X-Header-Set", "value": "set-overwrites-values" }],
                "add": [{ "name": "X-Header-Add", "value": "header-val-1" },
                        { "name": "X-Header-Add-Append", "value": "header-val-2" }],
                "remove": ["X-Header-Remove"] } },
            { "response_header_modifier": {
                "set": [{ "name": "x-served-by", "value": "route" }], "remove": ["server"] } },
        ],
    }]))]));
    let mut req = Request::get("/")
        .header("x-header-set", "set-val")
        .header("x-header-add-append", "append-val-1")
        .header("x-header-remove", "remove-val")
        .body(())
        .unwrap();
    let rule = rule_for(&t, "/");
    rule.edit_request(&mut req);
    let h = req.headers();
    assert_eq!(h["x-header-set"], "set-overwrites-values");
    assert_eq!(h["x-header-add"], "header-val-1");
    let appended: Vec<&str> = h
        .get_all("x-header-add-append")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    assert_eq!(appended, ["append-val-1", "header-val-2"]);
    assert!(!h.contains_key("x-header-remove"));

    let mut resp = HeaderMap::new();
    resp.insert("server", HeaderValue::from_static("demo"));
    rule.edit_response(&mut resp);
    assert_eq!(resp["x-served-by"], "route");
    assert!(!resp.contains_key("server"));
}

#[test]
fn redirects_build_their_location() {
    let redirect = |filter: Value| {
        table(json!([route(json!([{
            "matches": [prefix("/original-prefix")],
            "filters": [{ "request_redirect": filter }],
        }]))]))
    };
    let location = |t: &RouteTable<String>, uri: &str, host: &str, port: u16| {
        let u: Uri = uri.parse().unwrap();
        let (status, location) = rule_for(t, uri)
            .redirect(&u, host, port)
            .expect("a redirect");
        (status.as_u16(), location.to_str().unwrap().to_string())
    };
    // The defaults: 302, the request's scheme (http), host, port and path.
    let t = redirect(json!({}));
    assert_eq!(
        location(&t, "/original-prefix/a?x=1", "reviews.test", 80),
        (302, "http://reviews.test/original-prefix/a?x=1".to_string())
    );
    assert_eq!(
        location(&t, "/original-prefix", "reviews.test", 9080).1,
        "http://reviews.test:9080/original-prefix"
    );
    // A path prefix, a status.
    let t = redirect(
        json!({ "path": { "replace_prefix_match": "/replacement-prefix" }, "status_code": 301 }),
    );
    assert_eq!(
        location(&t, "/original-prefix/lemon", "h", 80),
        (301, "http://h/replacement-prefix/lemon".to_string())
    );
    // A scheme brings its well-known port, left out of the Location.
    let t = redirect(json!({ "scheme": "https" }));
    assert_eq!(
        location(&t, "/original-prefix", "h", 8080).1,
        "https://h/original-prefix"
    );
    // A port of its own; a host name; an IPv6 address keeps its brackets.
    let t = redirect(json!({ "hostname": "example.org", "port": 8443, "scheme": "https" }));
    assert_eq!(
        location(&t, "/original-prefix", "h", 80).1,
        "https://example.org:8443/original-prefix"
    );
    let t = redirect(json!({ "port": 80 }));
    assert_eq!(
        location(&t, "/original-prefix", "::1", 9080).1,
        "http://[::1]/original-prefix"
    );
    // A rule that forwards has no redirect.
    let t = table(json!([route(json!([{}]))]));
    let u: Uri = "/".parse().unwrap();
    assert!(rule_for(&t, "/").redirect(&u, "h", 80).is_none());
    assert_eq!(StatusCode::MOVED_PERMANENTLY.as_u16(), 301);
}

/// The indexed lookup against a plain reading of the precedence rules, on random tables.
#[test]
fn the_index_finds_what_a_scan_in_precedence_order_finds() {
    let mut seed: u64 = 0x2545_F491_4F6C_DD1D;
    let mut next = move |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    let segments = ["a", "b", "ab", "c"];
    let random_path = |next: &mut dyn FnMut(u64) -> u64| {
        let mut path = String::new();
        for _ in 0..next(4) {
            path.push('/');
            path.push_str(segments[next(4) as usize]);
        }
        if path.is_empty() || next(4) == 0 {
            path.push('/');
        }
        path
    };
    for _ in 0..300 {
        // (route, rule) → one match: (kind, value, method, headers, query).
        let mut routes = Vec::new();
        let mut oracle = Vec::new();
        for i in 0..1 + next(3) {
            let mut rules = Vec::new();
            for j in 0..1 + next(4) {
                let kind = ["exact", "prefix", "regex", "any"][next(4) as usize];
                let value = match kind {
                    "regex" => "/a.*".to_string(),
                    _ => random_path(&mut next),
                };
                let method = ["GET", "POST", ""][next(3) as usize];
                let headers: Vec<&str> = ["x", "y"].into_iter().filter(|_| next(2) == 0).collect();
                let query = next(3) == 0;
                let mut m = json!({
                    "headers": headers.iter().map(|h| json!({ "name": h, "value": "1" })).collect::<Vec<_>>(),
                    "query_params": if query { json!([{ "name": "q", "value": "1" }]) } else { json!([]) },
                });
                if kind != "any" {
                    m["path"] = json!({ "type": kind, "value": value });
                }
                if !method.is_empty() {
                    m["method"] = json!(method);
                }
                rules.push(json!({ "matches": [m] }));
                oracle.push((i, j, kind, value, method, headers, query));
            }
            routes.push(route(json!(rules)));
        }
        let t = table(json!(routes));
        for _ in 0..30 {
            let path = random_path(&mut next);
            let method = ["GET", "POST"][next(2) as usize];
            let headers: Vec<(&str, &str)> = [("x", "1"), ("y", "1")]
                .into_iter()
                .filter(|_| next(2) == 0)
                .collect();
            let query = next(2) == 0;
            let uri = if query {
                format!("{path}?q=1")
            } else {
                path.clone()
            };

            let satisfied = |(_, _, kind, value, m, hs, q): &&(
                u64,
                u64,
                &str,
                String,
                &str,
                Vec<&str>,
                bool,
            )| {
                let path_ok = match *kind {
                    "exact" => path == *value,
                    "prefix" => {
                        let p = value.trim_end_matches('/');
                        path == p || path.starts_with(&format!("{p}/"))
                    }
                    "regex" => path.starts_with("/a"),
                    _ => true,
                };
                path_ok
                    && (m.is_empty() || *m == method)
                    && hs.iter().all(|h| headers.iter().any(|(n, _)| n == h))
                    && (!q || query)
            };
            let want = oracle
                .iter()
                .filter(satisfied)
                .min_by_key(|(i, j, kind, value, m, hs, q)| {
                    let rank = ["exact", "prefix", "regex", "any"]
                        .iter()
                        .position(|k| k == kind);
                    let len = if *kind == "prefix" {
                        value.trim_end_matches('/').len()
                    } else {
                        0
                    };
                    (
                        rank,
                        Reverse(len),
                        m.is_empty(),
                        Reverse(hs.len()),
                        Reverse(*q),
                        *i,
                        *j,
                    )
                })
                .map(|(i, j, ..)| format!("{i}.{j}"));
            assert_eq!(
                hit(&t, method, &uri, &headers),
                want,
                "{method} {uri} {headers:?} in {oracle:#?}"
            );
        }
    }
}
