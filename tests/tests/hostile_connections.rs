//! Hostile connections (issue "hostile input", item 5): slowloris headers,
//! idle HTTP/1 keep-alive, idle HTTP/2 and gRPC connections, a long call
//! that the idle timeout must not cut, and the per-cell connection limit
//! with a descriptor limit that cannot hold every client, and the lingering
//! close that lets a client sending an oversized body read its 413.
//!
//! The clients here are raw sockets (HTTP/1 text, HTTP/2 frames with
//! literal HPACK headers): the point is to see the TCP connection close, or
//! stay open, which pooling clients hide.

use std::time::{Duration, Instant};

use honeycell_auth::Role;
use honeycell_tests::{TestServer, metric_sum};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

/// Every test's server runs one cell, so that the limit is one cell's.
fn server() -> honeycell_tests::ServerBuilder {
    TestServer::builder().cells(1)
}

async fn connect(port: u16) -> TcpStream {
    TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap_or_else(|e| panic!("connect to 127.0.0.1:{port}: {e}"))
}

/// Reads (and drops) whatever arrives until the server closes the
/// connection; how long that took. Panics after `within`.
async fn closed_within(stream: &mut TcpStream, within: Duration) -> Duration {
    let started = Instant::now();
    let mut buf = [0u8; 4096];
    let closed = tokio::time::timeout(within, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(
        closed.is_ok(),
        "the server kept the connection open for {within:?}"
    );
    started.elapsed()
}

/// One HTTP/1.1 keep-alive `GET` on `stream`: (status, head, body).
async fn http1_get(stream: &mut TcpStream, path: &str) -> (u16, String, Vec<u8>) {
    let request = format!("GET {path} HTTP/1.1\r\nhost: localhost\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .expect("write the request");
    let mut data = Vec::new();
    let mut buf = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = data.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf))
            .await
            .expect("an answer within 10 s")
            .expect("read the answer");
        assert!(
            n > 0,
            "closed before a full answer: {:?}",
            String::from_utf8_lossy(&data)
        );
        data.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8_lossy(&data[..head_end]).to_ascii_lowercase();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line: {head}"));
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map(|v| v.trim().parse().expect("a content length"))
        .unwrap_or_else(|| panic!("no content-length: {head}"));
    let mut body = data[head_end..].to_vec();
    while body.len() < length {
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf))
            .await
            .expect("a body within 10 s")
            .expect("read the body");
        assert!(n > 0, "closed in the middle of the body");
        body.extend_from_slice(&buf[..n]);
    }
    (status, head, body)
}

// ---- a minimal HTTP/2 client ----

const DATA: u8 = 0;
const HEADERS: u8 = 1;
const SETTINGS: u8 = 4;
const PING: u8 = 6;
const WINDOW_UPDATE: u8 = 8;
const END_STREAM: u8 = 0x1;
const ACK: u8 = 0x1;
const END_HEADERS: u8 = 0x4;

struct Frame {
    kind: u8,
    flags: u8,
    stream: u32,
    payload: Vec<u8>,
}

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).expect("a small frame");
    let mut f = len.to_be_bytes()[1..].to_vec();
    f.extend([kind, flags]);
    f.extend(stream.to_be_bytes());
    f.extend(payload);
    f
}

/// An HPACK integer with a `bits`-bit prefix.
fn hpack_int(out: &mut Vec<u8>, bits: u32, mut v: usize) {
    let max = (1usize << bits) - 1;
    if v < max {
        out.push(v as u8);
        return;
    }
    out.push(max as u8);
    v -= max;
    while v >= 128 {
        out.push((v % 128 + 128) as u8);
        v /= 128;
    }
    out.push(v as u8);
}

/// A header block of literal fields without indexing (no Huffman).
fn header_block(headers: &[(&str, &str)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, value) in headers {
        out.push(0);
        hpack_int(&mut out, 7, name.len());
        out.extend(name.as_bytes());
        hpack_int(&mut out, 7, value.len());
        out.extend(value.as_bytes());
    }
    out
}

/// One gRPC message (uncompressed) around protobuf bytes.
fn grpc_message(protobuf: &[u8]) -> Vec<u8> {
    let mut m = vec![0];
    m.extend(u32::try_from(protobuf.len()).expect("small").to_be_bytes());
    m.extend(protobuf);
    m
}

/// A response on one stream: the first byte of its first header block
/// (0x88 is `:status: 200` from the static table) and its DATA bytes.
struct H2Response {
    status_byte: u8,
    data: Vec<u8>,
}

struct H2 {
    tcp: TcpStream,
    next_stream: u32,
}

impl H2 {
    /// Prior-knowledge HTTP/2 (h2c, as gRPC clients speak it). With
    /// `window`, the server may send that many DATA bytes on a stream before
    /// this client lets it send more.
    async fn connect(port: u16, window: Option<u32>) -> H2 {
        let mut tcp = connect(port).await;
        let mut settings = Vec::new();
        if let Some(w) = window {
            settings.extend(4u16.to_be_bytes());
            settings.extend(w.to_be_bytes());
        }
        let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        hello.extend(frame(SETTINGS, 0, 0, &settings));
        tcp.write_all(&hello).await.expect("write the preface");
        H2 {
            tcp,
            next_stream: 1,
        }
    }

    /// Sends a request; its stream id.
    async fn request(&mut self, headers: &[(&str, &str)], body: Option<&[u8]>) -> u32 {
        let id = self.next_stream;
        self.next_stream += 2;
        let flags = END_HEADERS | if body.is_none() { END_STREAM } else { 0 };
        let mut bytes = frame(HEADERS, flags, id, &header_block(headers));
        if let Some(body) = body {
            bytes.extend(frame(DATA, END_STREAM, id, body));
        }
        self.tcp.write_all(&bytes).await.expect("write a request");
        id
    }

    async fn get(&mut self, path: &str) -> u32 {
        self.request(
            &[
                (":method", "GET"),
                (":scheme", "http"),
                (":path", path),
                (":authority", "localhost"),
            ],
            None,
        )
        .await
    }

    /// A unary or server-streaming gRPC call with one request message.
    async fn grpc(&mut self, method: &str, token: Option<&str>, message: &[u8]) -> u32 {
        let path = format!("/arrow.flight.protocol.FlightService/{method}");
        let bearer = token.map(|t| format!("Bearer {t}"));
        let mut headers = vec![
            (":method", "POST"),
            (":scheme", "http"),
            (":path", path.as_str()),
            (":authority", "localhost"),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
        ];
        if let Some(b) = &bearer {
            headers.push(("authorization", b.as_str()));
        }
        self.request(&headers, Some(&grpc_message(message))).await
    }

    async fn window_update(&mut self, stream: u32, increment: u32) {
        let f = frame(WINDOW_UPDATE, 0, stream, &increment.to_be_bytes());
        self.tcp.write_all(&f).await.expect("write a window update");
    }

    /// The next frame, answering the server's SETTINGS and PINGs on the
    /// way; `None` once the server has closed the connection.
    async fn frame(&mut self) -> Option<Frame> {
        let mut head = [0u8; 9];
        self.tcp.read_exact(&mut head).await.ok()?;
        let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
        let mut payload = vec![0u8; len];
        self.tcp.read_exact(&mut payload).await.ok()?;
        let f = Frame {
            kind: head[3],
            flags: head[4],
            stream: u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff,
            payload,
        };
        let answer = match f.kind {
            SETTINGS if f.flags & ACK == 0 => Some(frame(SETTINGS, ACK, 0, &[])),
            PING if f.flags & ACK == 0 => Some(frame(PING, ACK, 0, &f.payload)),
            _ => None,
        };
        if let Some(a) = answer {
            // The server may be closing: a failed write shows up as the
            // next read's end of file.
            let _ = self.tcp.write_all(&a).await;
        }
        Some(f)
    }

    /// Reads until `stream` ends (within 10 s).
    async fn response(&mut self, stream: u32) -> H2Response {
        let mut status_byte = None;
        let mut data = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                let f = self
                    .frame()
                    .await
                    .expect("the server closed the connection before answering");
                if f.stream != stream {
                    continue;
                }
                match f.kind {
                    HEADERS => {
                        status_byte.get_or_insert(f.payload.first().copied().unwrap_or(0));
                    }
                    DATA => data.extend_from_slice(&f.payload),
                    _ => {}
                }
                if f.flags & END_STREAM != 0 && matches!(f.kind, HEADERS | DATA) {
                    return;
                }
            }
        })
        .await;
        assert!(
            read.is_ok(),
            "no full answer on stream {stream} within 10 s"
        );
        H2Response {
            status_byte: status_byte.expect("a header block"),
            data,
        }
    }

    /// How long until the server closes the connection (answering its
    /// pings meanwhile). Panics after `within`.
    async fn closed_within(&mut self, within: Duration) -> Duration {
        let started = Instant::now();
        let closed =
            tokio::time::timeout(within, async { while self.frame().await.is_some() {} }).await;
        assert!(
            closed.is_ok(),
            "the server kept the HTTP/2 connection open for {within:?}"
        );
        started.elapsed()
    }

    /// Reads (answering pings) for `d`, asserting the connection stays
    /// open and `stream` gets no DATA.
    async fn stays_open_without_data(&mut self, d: Duration, stream: u32) {
        let outcome = tokio::time::timeout(d, async {
            loop {
                match self.frame().await {
                    None => return "the server closed the connection",
                    Some(f) if f.stream == stream && f.kind == DATA => {
                        return "DATA arrived beyond the flow-control window";
                    }
                    Some(_) => {}
                }
            }
        })
        .await;
        if let Ok(problem) = outcome {
            panic!("during a call in flight: {problem}");
        }
    }
}

const IDLE: Duration = Duration::from_secs(2);

/// A server whose idle timeout is two seconds.
async fn idle_server() -> TestServer {
    server()
        .toml("[connections]\nidle_timeout = \"2s\"\nheader_read_timeout = \"20s\"")
        .start()
        .await
}

#[tokio::test]
async fn slowloris_headers_are_cut_at_the_header_read_timeout() {
    let server = server()
        .toml("[connections]\nheader_read_timeout = \"2s\"")
        .start()
        .await;
    let mut slow = connect(server.ports().http).await;
    let started = Instant::now();
    slow.write_all(b"GET /health HTTP/1.1\r\nhost: localhost\r\n")
        .await
        .expect("write the request line");
    let mut buf = [0u8; 1024];
    let closed_after = loop {
        match tokio::time::timeout(Duration::from_secs(1), slow.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => break started.elapsed(),
            // Whatever the server says (a 408, say), the close follows.
            Ok(Ok(_)) => continue,
            Err(_) => {}
        }
        assert!(
            started.elapsed() < Duration::from_secs(8),
            "a client sending one header line a second was still connected after {:?}",
            started.elapsed()
        );
        // One more header line, as slowloris does.
        if slow.write_all(b"x-slow: 1\r\n").await.is_err() {
            break started.elapsed();
        }
        // Meanwhile everyone else is served.
        let health = server
            .http()
            .get(server.url("/health"))
            .send()
            .await
            .expect("GET /health");
        assert_eq!(health.status(), 200);
    };
    assert!(
        closed_after < Duration::from_secs(6),
        "closed only after {closed_after:?}"
    );
}

#[tokio::test]
async fn idle_http1_keep_alive_connections_are_closed() {
    let server = idle_server().await;
    let mut conn = connect(server.ports().http).await;
    let (status, _, _) = http1_get(&mut conn, "/health").await;
    assert_eq!(status, 200);
    let after = closed_within(&mut conn, Duration::from_secs(8)).await;
    assert!(
        after >= IDLE - Duration::from_millis(500),
        "closed after {after:?}, before the idle timeout"
    );
}

#[tokio::test]
async fn idle_http2_and_flight_connections_are_closed() {
    let server = idle_server().await;

    // h2c on the HTTP port: one request, then nothing.
    let mut h2 = H2::connect(server.ports().http, None).await;
    let id = h2.get("/health").await;
    assert_eq!(h2.response(id).await.status_byte, 0x88, ":status 200");
    let after = h2.closed_within(Duration::from_secs(8)).await;
    assert!(
        after >= IDLE - Duration::from_millis(500),
        "after {after:?}"
    );

    // gRPC on the shared and on the cell's own Flight port.
    for port in [server.ports().flight, server.cell_port(0)] {
        let mut grpc = H2::connect(port, None).await;
        let id = grpc.grpc("ListActions", None, &[]).await;
        let answer = grpc.response(id).await;
        assert_eq!(answer.status_byte, 0x88, ":status 200");
        assert!(!answer.data.is_empty(), "ListActions answered no message");
        let after = grpc.closed_within(Duration::from_secs(8)).await;
        assert!(
            after >= IDLE - Duration::from_millis(500),
            "after {after:?}"
        );

        // A connection that never sends a request is idle from the start.
        let mut silent = connect(port).await;
        closed_within(&mut silent, Duration::from_secs(8)).await;
    }
}

#[tokio::test]
async fn a_call_in_flight_is_not_cut_by_the_idle_timeout() {
    let server = idle_server().await;
    let token = server.token("hostile", Role::Admin);
    server.ingest_n(&token, 50, 7).await;

    // A DoGet whose client grants no flow-control window: the answer is
    // ready but no byte of it can move, for well past the idle timeout.
    let mut h2 = H2::connect(server.cell_port(0), Some(0)).await;
    let ticket = [&[0x0a, 2][..], b"{}"].concat();
    let id = h2.grpc("DoGet", Some(&token), &ticket).await;
    h2.stays_open_without_data(IDLE * 5 / 2, id).await;

    // Then the client reads it all.
    h2.window_update(0, 1 << 24).await;
    h2.window_update(id, 1 << 24).await;
    let answer = h2.response(id).await;
    let events = answer
        .data
        .windows(b"invoice-".len())
        .filter(|w| *w == b"invoice-")
        .count();
    assert!(
        events > 10,
        "DoGet sent {} bytes, not the org's events",
        answer.data.len()
    );

    // Once nothing is in flight, the connection is idle.
    let after = h2.closed_within(Duration::from_secs(8)).await;
    assert!(
        after >= IDLE - Duration::from_millis(500),
        "after {after:?}"
    );
}

#[tokio::test]
async fn connections_past_the_cell_limit_are_refused_cleanly() {
    const LIMIT: usize = 8;
    let server = server()
        .toml(&format!(
            "[connections]\nmax_per_cell = {LIMIT}\nheader_read_timeout = \"60s\""
        ))
        .start()
        .await;
    let port = server.ports().http;

    // Keep-alive connections, each answered, until one is refused. (The
    // harness's own client may hold one of the cell's places.)
    let mut held = Vec::new();
    let refused_head = loop {
        assert!(held.len() <= LIMIT, "more than {LIMIT} connections open");
        let mut conn = connect(port).await;
        let (status, head, body) = http1_get(&mut conn, "/health").await;
        if status == 503 {
            let body = String::from_utf8_lossy(&body).into_owned();
            assert!(body.contains("too_many_connections"), "{body}");
            closed_within(&mut conn, Duration::from_secs(5)).await;
            break head;
        }
        assert_eq!(status, 200, "{head}");
        held.push(conn);
    };
    assert!(held.len() >= LIMIT - 1, "refused at {} open", held.len());
    assert!(refused_head.contains("retry-after: 1"), "{refused_head}");
    assert!(refused_head.contains("connection: close"), "{refused_head}");

    // The limit is the cell's: its Flight port is full too.
    let mut flight = connect(server.ports().flight).await;
    closed_within(&mut flight, Duration::from_secs(5)).await;

    // Room again once clients leave.
    held.truncate(held.len() - 2);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut conn = connect(port).await;
        if http1_get(&mut conn, "/health").await.0 == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "no room after clients left");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(held);
    let metrics = server.metrics().await;
    assert!(
        metric_sum(&metrics, "honeycell_connections_refused_total", &[]) >= 2.0,
        "{metrics}"
    );
}

#[tokio::test]
async fn more_clients_than_descriptors_get_refusals_not_accept_errors() {
    // This process opens a few hundred sockets.
    raise_own_descriptor_limit(2048);
    let server = server()
        .nofile_limit(256)
        .toml("[connections]\nheader_read_timeout = \"60s\"\nidle_timeout = \"60s\"")
        .start()
        .await;
    let port = server.ports().http;
    let mut clients = Vec::new();
    for _ in 0..400 {
        clients.push(connect(port).await);
    }
    // Every client has been accepted (held or refused): a new one is
    // answered, with a 503 while the cell is full.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut probe = connect(port).await;
    let (status, _, _) = http1_get(&mut probe, "/health").await;
    assert_eq!(status, 503);
    assert!(Instant::now() < deadline);

    drop(clients);
    loop {
        let mut conn = connect(port).await;
        if http1_get(&mut conn, "/health").await.0 == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "/health never answered again");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let log = server.log();
    assert!(
        !log.contains("Too many open files"),
        "the server ran out of descriptors:\n{log}"
    );
    assert!(
        log.contains("connections.max_per_cell lowered"),
        "the limit was not fitted to 256 descriptors:\n{log}"
    );
}

fn raise_own_descriptor_limit(want: u64) {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain getrlimit/setrlimit on structs we own.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0);
        if limit.rlim_cur < want {
            limit.rlim_cur = want.min(limit.rlim_max);
            assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &limit), 0);
        }
    }
}

/// A body over `max_body_bytes` that the client sends whole (as clients
/// that do not wait for `100 Continue` do) gets its 413: the server stops
/// sending, then reads and discards the rest (`connections.lingering_time`)
/// instead of closing with unread bytes, which resets the connection and
/// destroys the answer in the client's receive buffer ("broken pipe").
#[tokio::test]
async fn an_oversized_body_sent_whole_gets_its_413_not_a_reset() {
    let server = server()
        .toml("[http_limits]\nmax_body_bytes = 1048576")
        .start()
        .await;
    let token = server.token("linger", Role::Viewer);
    let body_len = 8 * 1024 * 1024;
    let mut stream = connect(server.ports().http).await;
    let head = format!(
        "POST /graphql HTTP/1.1\r\nhost: localhost\r\nauthorization: Bearer {token}\r\ncontent-type: application/json\r\ncontent-length: {body_len}\r\n\r\n"
    );
    stream
        .write_all(head.as_bytes())
        .await
        .expect("write the head");
    let chunk = vec![b' '; 64 * 1024];
    let mut sent = 0;
    let mut write_error = None;
    while sent < body_len {
        match stream.write_all(&chunk).await {
            Ok(()) => sent += chunk.len(),
            Err(e) => {
                write_error = Some(e);
                break;
            }
        }
    }
    let _ = stream.shutdown().await;
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer))
        .await
        .expect("the answer and the close within 10 s");
    assert!(
        write_error.is_none(),
        "sending the body failed after {sent} bytes: {write_error:?} (the server reset the connection)"
    );
    read.expect("reading the answer (a reset destroys it)");
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 413"), "{text}");
    // The unread body makes the connection unusable: clients are told so.
    assert!(
        text.to_ascii_lowercase()
            .contains("\r\nconnection: close\r\n"),
        "{text}"
    );
    assert!(text.contains("body_too_large"), "{text}");
    assert!(text.contains("max_body_bytes"), "{text}");
}

#[tokio::test]
async fn a_body_trickling_in_under_the_minimum_rate_gets_408_and_a_fast_enough_one_is_read() {
    let server = server()
        .toml("[http_limits]\nmin_body_bytes_per_sec = 1024\nbody_grace_secs = 1")
        .start()
        .await;
    let token = server.token("slow", Role::Operator);
    let event =
        br#"[{"event_type":"INSERT","entity_type":"t","entity_id":"e-1","data":{"pad":"PAD"}}]"#;
    let body = String::from_utf8_lossy(event).replace("PAD", &"x".repeat(3_000));
    let head = |len: usize| {
        format!(
            "POST /v1/events HTTP/1.1\r\nhost: localhost\r\nauthorization: Bearer {token}\r\ncontent-type: application/json\r\ncontent-length: {len}\r\n\r\n"
        )
    };

    // 10 bytes every 200 ms: 50 bytes/s, far under 1 KiB/s.
    let mut slow = connect(server.ports().http).await;
    slow.write_all(head(body.len()).as_bytes())
        .await
        .expect("write the head");
    let started = Instant::now();
    let mut answer = Vec::new();
    for piece in body.as_bytes().chunks(10) {
        if slow.write_all(piece).await.is_err() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        // The answer may already be there: stop sending once it is.
        let mut buf = [0u8; 4096];
        if let Ok(Ok(n)) = tokio::time::timeout(Duration::from_millis(1), slow.read(&mut buf)).await
            && n > 0
        {
            answer.extend_from_slice(&buf[..n]);
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "no answer to a body at 50 bytes/s after 20 s"
        );
    }
    let _ = tokio::time::timeout(Duration::from_secs(5), slow.read_to_end(&mut answer)).await;
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("body_too_slow"), "{text}");
    assert!(text.contains("min_body_bytes_per_sec"), "{text}");
    assert!(
        text.to_ascii_lowercase()
            .contains("\r\nconnection: close\r\n"),
        "{text}"
    );

    // The same body at ~2 KiB/s (1 KiB every 500 ms) is read and stored.
    let mut steady = connect(server.ports().http).await;
    steady
        .write_all(head(body.len()).as_bytes())
        .await
        .expect("write the head");
    for piece in body.as_bytes().chunks(1024) {
        steady.write_all(piece).await.expect("write a piece");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let mut buf = vec![0u8; 8192];
    let n = tokio::time::timeout(Duration::from_secs(10), steady.read(&mut buf))
        .await
        .expect("an answer")
        .expect("read");
    let text = String::from_utf8_lossy(&buf[..n]);
    assert!(text.starts_with("HTTP/1.1 20"), "{text}");
    assert_eq!(server.count_http(&token).await, 1);
}
