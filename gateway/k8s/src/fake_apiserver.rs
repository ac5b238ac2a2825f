//! A FAKE Kubernetes API server, for the watcher tests only: no API server
//! can run on the build machines, and this is the one fake the project
//! allows. It serves what kube's watcher uses, in the API's own shapes:
//! lists (`{kind}List` with `metadata.resourceVersion`; items without
//! `kind`, as a real server sends them), watches from a resourceVersion
//! (chunked JSON lines `{"type": ADDED|MODIFIED|DELETED|BOOKMARK|ERROR,
//! "object": ...}`), `fieldSelector` on `metadata.name` and
//! `spec.nodeName`, 410 Gone (an ERROR event with code 410 for a
//! resourceVersion older than the last compaction), bookmarks on demand, a
//! dropped connection, and an outage (every connection closed at once).
//! Objects come from JSON fixtures written as the API server returns them.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use super::resources::Watched;

#[derive(Clone)]
struct Collection {
    what: Watched,
    /// Live objects by `namespace/name`.
    objects: BTreeMap<String, Value>,
}

#[derive(Default)]
struct State {
    rv: u64,
    /// The collections by URL path.
    collections: BTreeMap<String, Collection>,
    /// Every change: (resourceVersion, path, event type, object).
    log: Vec<(u64, String, &'static str, Value)>,
    /// Watches from before this resourceVersion get 410 Gone.
    compacted: u64,
    /// Requests by (path, "list" | "watch from RV").
    requests: Vec<(String, String)>,
    down: bool,
}

/// The fake; dropped, it stops serving.
pub struct FakeApiServer {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
    /// Bumped on every change, bookmark or drop; watch streams follow it.
    tick: watch::Sender<(u64, Signal)>,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Signal {
    Change,
    Bookmark,
    Drop,
}

fn path_of(w: &Watched) -> String {
    if w.group.is_empty() {
        format!("/api/{}/{}", w.version, w.plural)
    } else {
        format!("/apis/{}/{}/{}", w.group, w.version, w.plural)
    }
}

fn key_of(o: &Value) -> String {
    let name = o["metadata"]["name"].as_str().unwrap_or_default();
    match o["metadata"]["namespace"].as_str() {
        Some(ns) => format!("{ns}/{name}"),
        None => name.to_string(),
    }
}

impl FakeApiServer {
    /// Serves `resources` (empty) on a loopback port.
    pub async fn start(resources: &[Watched]) -> FakeApiServer {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding the fake API server");
        let addr = listener.local_addr().expect("its address");
        let mut st = State {
            rv: 1,
            ..State::default()
        };
        for w in resources {
            st.collections.insert(
                path_of(w),
                Collection {
                    what: *w,
                    objects: BTreeMap::new(),
                },
            );
        }
        let state = Arc::new(Mutex::new(st));
        let (tick, _) = watch::channel((0, Signal::Change));
        let (s, t) = (state.clone(), tick.clone());
        let task = tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                tokio::spawn(serve(conn, s.clone(), t.clone()));
            }
        });
        FakeApiServer {
            addr,
            state,
            tick,
            task,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A kube client for it.
    pub fn client(&self) -> kube::Client {
        let cfg = kube::Config::new(self.url().parse().expect("a URL"));
        kube::Client::try_from(cfg).expect("a kube client for the fake API server")
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn signal(&self, s: Signal) {
        self.tick.send_modify(|(n, last)| {
            *n += 1;
            *last = s;
        });
    }

    /// Adds or changes an object (its kind picks the collection), with a
    /// new resourceVersion.
    pub fn apply(&self, mut obj: Value) {
        {
            let mut st = self.lock();
            st.rv += 1;
            let rv = st.rv;
            obj["metadata"]["resourceVersion"] = json!(rv.to_string());
            let kind = obj["kind"]
                .as_str()
                .expect("a fixture object has a kind")
                .to_string();
            let (path, coll) = st
                .collections
                .iter_mut()
                .find(|(_, c)| c.what.kind == kind)
                .unwrap_or_else(|| panic!("the fake serves no {kind}"));
            let path = path.clone();
            let k = key_of(&obj);
            let kind_of_event = if coll.objects.contains_key(&k) {
                "MODIFIED"
            } else {
                "ADDED"
            };
            coll.objects.insert(k, obj.clone());
            st.log.push((rv, path, kind_of_event, obj));
        }
        self.signal(Signal::Change);
    }

    /// Every object of a fixture: one object, or a `*List` with `items`
    /// (whose items get the list's kind without `List`, as fixtures of
    /// lists from `kubectl get -o json` lack none).
    pub fn apply_fixture(&self, text: &str) {
        let v: Value = serde_json::from_str(text).expect("a fixture is JSON");
        match v.get("items").and_then(Value::as_array) {
            Some(items) => items.iter().for_each(|i| self.apply(i.clone())),
            None => self.apply(v),
        }
    }

    /// Deletes `namespace/name` (or `name`) of `kind`.
    pub fn delete(&self, kind: &str, key: &str) {
        {
            let mut st = self.lock();
            st.rv += 1;
            let rv = st.rv;
            let (path, coll) = st
                .collections
                .iter_mut()
                .find(|(_, c)| c.what.kind == kind)
                .unwrap_or_else(|| panic!("the fake serves no {kind}"));
            let path = path.clone();
            let mut obj = coll
                .objects
                .remove(key)
                .unwrap_or_else(|| panic!("no {kind} {key}"));
            obj["metadata"]["resourceVersion"] = json!(rv.to_string());
            st.log.push((rv, path, "DELETED", obj));
        }
        self.signal(Signal::Change);
    }

    /// Forgets the change log: a watch from any resourceVersion before now
    /// gets 410 Gone, and the watcher must list again.
    pub fn compact(&self) {
        let mut st = self.lock();
        st.compacted = st.rv;
        st.log.clear();
    }

    /// Sends every open watch a bookmark at the resourceVersion now (each
    /// sent one is in [`Self::requests`] as `bookmark at RV`); returns it.
    pub fn bookmark(&self) -> u64 {
        let rv = self.lock().rv;
        self.signal(Signal::Bookmark);
        rv
    }

    /// Closes every open watch connection mid-stream.
    pub fn drop_watches(&self) {
        self.signal(Signal::Drop);
    }

    /// Down: every connection is closed at once, open watches too. Up again:
    /// served as before, state kept.
    pub fn set_down(&self, down: bool) {
        self.lock().down = down;
        if down {
            self.signal(Signal::Drop);
        }
    }

    /// The requests of a collection so far: "list" or "watch from RV".
    pub fn requests(&self, w: &Watched) -> Vec<String> {
        let p = path_of(w);
        self.lock()
            .requests
            .iter()
            .filter(|(path, _)| *path == p)
            .map(|(_, r)| r.clone())
            .collect()
    }
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        self.task.abort();
        self.signal(Signal::Drop);
    }
}

fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = b
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok());
        match (b[i], hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'%', Some(v)) => {
                out.push(v);
                i += 3;
            }
            (b'+', _) => {
                out.push(b' ');
                i += 1;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Whether `o` passes a `fieldSelector` of `a=b` terms.
fn selected(o: &Value, selector: Option<&str>) -> bool {
    selector.into_iter().flat_map(|s| s.split(',')).all(|term| {
        let Some((field, want)) = term.split_once('=') else {
            return true;
        };
        let pointer = format!("/{}", field.replace('.', "/"));
        o.pointer(&pointer).and_then(Value::as_str) == Some(want)
    })
}

async fn serve(mut conn: TcpStream, state: Arc<Mutex<State>>, tick: watch::Sender<(u64, Signal)>) {
    let mut buf = Vec::new();
    loop {
        // One request head (GET, no body).
        let head = loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                buf.drain(..end + 4);
                break head;
            }
            let mut chunk = [0u8; 4096];
            match conn.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        if state.lock().unwrap_or_else(|p| p.into_inner()).down {
            return;
        }
        let target = head.split_whitespace().nth(1).unwrap_or("/").to_string();
        let (path, query) = target.split_once('?').unwrap_or((&target, ""));
        let params: BTreeMap<String, String> = query
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_string(), decode(v)))
            .collect();
        let fields = params.get("fieldSelector").map(String::as_str);
        if params.get("watch").map(String::as_str) == Some("true") {
            let from: u64 = params
                .get("resourceVersion")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            watch_stream(
                conn,
                path.to_string(),
                from,
                fields.map(str::to_string),
                state,
                tick,
            )
            .await;
            return;
        }
        let body = {
            let mut st = state.lock().unwrap_or_else(|p| p.into_inner());
            st.requests.push((path.to_string(), "list".into()));
            match st.collections.get(path) {
                Some(c) => {
                    let items: Vec<Value> = c
                        .objects
                        .values()
                        .filter(|o| selected(o, fields))
                        .map(|o| {
                            let mut o = o.clone();
                            if let Some(m) = o.as_object_mut() {
                                m.remove("kind");
                                m.remove("apiVersion");
                            }
                            o
                        })
                        .collect();
                    Some(json!({
                        "apiVersion": c.what.api_version(),
                        "kind": format!("{}List", c.what.kind),
                        "metadata": {"resourceVersion": st.rv.to_string()},
                        "items": items,
                    }))
                }
                None => None,
            }
        };
        let (status, body) = match body {
            Some(b) => ("200 OK", b.to_string()),
            None => (
                "404 Not Found",
                json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                       "message": format!("the fake serves no {path}"), "reason": "NotFound", "code": 404})
                .to_string(),
            ),
        };
        let resp = format!(
            "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        if conn.write_all(resp.as_bytes()).await.is_err() {
            return;
        }
    }
}

async fn chunk(conn: &mut TcpStream, line: &Value) -> bool {
    let text = format!("{line}\n");
    let framed = format!("{:x}\r\n{text}\r\n", text.len());
    conn.write_all(framed.as_bytes()).await.is_ok()
}

async fn watch_stream(
    mut conn: TcpStream,
    path: String,
    from: u64,
    fields: Option<String>,
    state: Arc<Mutex<State>>,
    tick: watch::Sender<(u64, Signal)>,
) {
    let mut rx = tick.subscribe();
    let head =
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n";
    if conn.write_all(head.as_bytes()).await.is_err() {
        return;
    }
    let gone = {
        let mut st = state.lock().unwrap_or_else(|p| p.into_inner());
        st.requests
            .push((path.clone(), format!("watch from {from}")));
        from < st.compacted
    };
    if gone {
        let status = json!({"type": "ERROR", "object": {
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": format!("too old resource version: {from}"), "reason": "Expired", "code": 410}});
        let _ = chunk(&mut conn, &status).await;
        let _ = conn.write_all(b"0\r\n\r\n").await;
        return;
    }
    let mut sent = from;
    let mut signal = Signal::Change;
    loop {
        // The events after `sent` and the resourceVersion now, read together:
        // a bookmark at `rv` follows every event up to it.
        let (events, kind, api_version, rv) = {
            let st = state.lock().unwrap_or_else(|p| p.into_inner());
            let events: Vec<Value> = st
                .log
                .iter()
                .filter(|(rv, p, _, o)| *rv > sent && *p == path && selected(o, fields.as_deref()))
                .map(|(_, _, t, o)| json!({"type": t, "object": o}))
                .collect();
            let (kind, api_version) = st
                .collections
                .get(&path)
                .map(|c| (c.what.kind.to_string(), c.what.api_version()))
                .unwrap_or_default();
            (events, kind, api_version, st.rv)
        };
        for e in &events {
            if !chunk(&mut conn, e).await {
                return;
            }
        }
        if let Some(last) = events.last() {
            sent = last["object"]["metadata"]["resourceVersion"]
                .as_str()
                .and_then(|v| v.parse().ok())
                .unwrap_or(sent);
        }
        if signal == Signal::Bookmark {
            let bm = json!({"type": "BOOKMARK", "object": {
                "kind": kind, "apiVersion": api_version,
                "metadata": {"resourceVersion": rv.to_string()}}});
            if !chunk(&mut conn, &bm).await {
                return;
            }
            state
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .requests
                .push((path.clone(), format!("bookmark at {rv}")));
            sent = sent.max(rv);
        }
        if rx.changed().await.is_err() {
            return;
        }
        signal = rx.borrow_and_update().1;
        if signal == Signal::Drop {
            return; // mid-stream: no final chunk
        }
    }
}
