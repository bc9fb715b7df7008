//! A minimal AMQP 0-9-1 publisher that writes frames by hand, for the one
//! thing no client library will do: publish a message whose properties are
//! not what a well-behaved client sends — a `content_type` that is not
//! UTF-8, which the broker passes on verbatim and which makes lapin fail to
//! parse the frame (the "poison frame" of SPEC §11.1). Tests only; blocking.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use anyhow::Context;

const FRAME_METHOD: u8 = 1;
const FRAME_HEADER: u8 = 2;
const FRAME_BODY: u8 = 3;
const FRAME_HEARTBEAT: u8 = 8;
const FRAME_END: u8 = 0xCE;

/// A message with raw property bytes.
#[derive(Debug, Clone)]
pub struct RawMessage<'a> {
    pub exchange: &'a str,
    pub routing_key: &'a str,
    /// The `content_type` property, as bytes (any bytes).
    pub content_type: &'a [u8],
    pub body: &'a [u8],
}

/// Publishes `message` persistently with publisher confirms over a fresh
/// connection to `url` (`amqp://user:password@host:port/vhost`), and waits
/// for the broker's ack.
pub fn publish(url: &str, message: &RawMessage<'_>) -> anyhow::Result<()> {
    let url = url::Url::parse(url).context("the AMQP URL")?;
    let host = url.host_str().unwrap_or("127.0.0.1");
    let port = url.port().unwrap_or(5672);
    let user = percent(url.username());
    let password = percent(url.password().unwrap_or(""));
    let vhost = match url.path().trim_start_matches('/') {
        "" => "/".to_owned(),
        path => percent(path),
    };
    let mut stream = TcpStream::connect((host, port))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.write_all(b"AMQP\x00\x00\x09\x01")?;
    expect_method(&mut stream, 10, 10)?; // connection.start
    let mut start_ok = method(10, 11);
    start_ok.extend_from_slice(&0u32.to_be_bytes()); // client-properties: empty table
    short_string(&mut start_ok, b"PLAIN");
    long_string(&mut start_ok, format!("\0{user}\0{password}").as_bytes());
    short_string(&mut start_ok, b"en_US");
    send(&mut stream, FRAME_METHOD, 0, &start_ok)?;
    let tune = expect_method(&mut stream, 10, 30)?;
    // The broker's channel-max and frame-max, and no heartbeats.
    let mut tune_ok = method(10, 31);
    tune_ok.extend_from_slice(tune.get(4..10).context("connection.tune is short")?);
    tune_ok.extend_from_slice(&0u16.to_be_bytes());
    send(&mut stream, FRAME_METHOD, 0, &tune_ok)?;
    let mut open = method(10, 40);
    short_string(&mut open, vhost.as_bytes());
    short_string(&mut open, b"");
    open.push(0);
    send(&mut stream, FRAME_METHOD, 0, &open)?;
    expect_method(&mut stream, 10, 41)?;
    let mut channel_open = method(20, 10);
    short_string(&mut channel_open, b"");
    send(&mut stream, FRAME_METHOD, 1, &channel_open)?;
    expect_method(&mut stream, 20, 11)?;
    let mut select = method(85, 10);
    select.push(0);
    send(&mut stream, FRAME_METHOD, 1, &select)?;
    expect_method(&mut stream, 85, 11)?;

    let mut publish = method(60, 40);
    publish.extend_from_slice(&0u16.to_be_bytes());
    short_string(&mut publish, message.exchange.as_bytes());
    short_string(&mut publish, message.routing_key.as_bytes());
    publish.push(0);
    send(&mut stream, FRAME_METHOD, 1, &publish)?;
    let mut header = Vec::new();
    header.extend_from_slice(&60u16.to_be_bytes());
    header.extend_from_slice(&0u16.to_be_bytes());
    header.extend_from_slice(&(message.body.len() as u64).to_be_bytes());
    header.extend_from_slice(&(0x8000u16 | 0x1000).to_be_bytes()); // content-type, delivery-mode
    short_string(&mut header, message.content_type);
    header.push(2);
    send(&mut stream, FRAME_HEADER, 1, &header)?;
    send(&mut stream, FRAME_BODY, 1, message.body)?;
    expect_method(&mut stream, 60, 80)?; // basic.ack

    let mut close = method(10, 50);
    close.extend_from_slice(&200u16.to_be_bytes());
    short_string(&mut close, b"done");
    close.extend_from_slice(&[0, 0, 0, 0]);
    send(&mut stream, FRAME_METHOD, 0, &close)?;
    expect_method(&mut stream, 10, 51)?;
    Ok(())
}

fn percent(text: &str) -> String {
    url::form_urlencoded::parse(format!("x={}", text.replace('+', "%2B")).as_bytes())
        .next()
        .map(|(_, value)| value.into_owned())
        .unwrap_or_default()
}

fn method(class: u16, method: u16) -> Vec<u8> {
    let mut payload = class.to_be_bytes().to_vec();
    payload.extend_from_slice(&method.to_be_bytes());
    payload
}

fn short_string(out: &mut Vec<u8>, text: &[u8]) {
    out.push(text.len().min(255) as u8);
    out.extend_from_slice(&text[..text.len().min(255)]);
}

fn long_string(out: &mut Vec<u8>, text: &[u8]) {
    out.extend_from_slice(&(text.len() as u32).to_be_bytes());
    out.extend_from_slice(text);
}

fn send(stream: &mut TcpStream, kind: u8, channel: u16, payload: &[u8]) -> std::io::Result<()> {
    let mut frame = Vec::with_capacity(payload.len() + 8);
    frame.push(kind);
    frame.extend_from_slice(&channel.to_be_bytes());
    frame.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    frame.extend_from_slice(payload);
    frame.push(FRAME_END);
    stream.write_all(&frame)
}

/// Reads frames until a method frame arrives; it must be `class.method`.
fn expect_method(stream: &mut TcpStream, class: u16, method: u16) -> anyhow::Result<Vec<u8>> {
    loop {
        let mut head = [0u8; 7];
        stream.read_exact(&mut head)?;
        let size = u32::from_be_bytes([head[3], head[4], head[5], head[6]]) as usize;
        let mut payload = vec![0u8; size + 1];
        stream.read_exact(&mut payload)?;
        anyhow::ensure!(payload[size] == FRAME_END, "a frame without its end marker");
        payload.truncate(size);
        if head[0] == FRAME_HEARTBEAT {
            continue;
        }
        anyhow::ensure!(head[0] == FRAME_METHOD, "expected a method frame");
        let found = (
            u16::from_be_bytes([payload[0], payload[1]]),
            u16::from_be_bytes([payload[2], payload[3]]),
        );
        anyhow::ensure!(
            found == (class, method),
            "expected method {class}.{method}, the broker sent {}.{} ({})",
            found.0,
            found.1,
            String::from_utf8_lossy(&payload[4..])
        );
        return Ok(payload);
    }
}
