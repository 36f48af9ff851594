//! Reserve one worker on an endpoint, hold it while "work" happens, release it.
//!
//! ```text
//! VAST_API_KEY=<account key> cargo run -p nullworker-client --example reserve -- <endpoint> [engine-url]
//! ```
//!
//! With a local engine (`nullworker engine`), the engine URL defaults to
//! `http://127.0.0.1:8080`; the api key is the engine's account key.

use std::time::Duration;

use nullworker_client::{Client, Instance, SessionEnd, SessionOptions};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let endpoint_name = args
        .next()
        .ok_or("usage: reserve <endpoint> [engine-url]")?;
    let api_key = std::env::var("VAST_API_KEY").unwrap_or_default();

    // `Instance::Local` talks to http://127.0.0.1:8080 for both the route
    // service and the web API; explicit URLs override it.
    let mut builder = Client::builder(api_key).instance(Instance::Local);
    if let Some(url) = args.next() {
        builder = builder.autoscaler_url(url.clone()).webserver_url(url);
    }
    let client = builder.build()?;
    let endpoint = client.endpoint(&endpoint_name).await?;

    // Waits (polling the route service) until a worker is free, then
    // reserves it. The lease is renewed in the background while we hold the
    // session; if this process dies the worker frees itself within `lifetime`.
    let session = endpoint
        .session(SessionOptions {
            cost: 100.0,
            lifetime: Duration::from_secs(60),
            timeout: Some(Duration::from_secs(300)),
            ..SessionOptions::default()
        })
        .await?;
    println!("reserved {} (session {})", session.url(), session.id());

    // Hand the work to the consumer on that instance here. It may release
    // the session itself (POST http://127.0.0.1:18999/release on the
    // instance); we notice that as `SessionEnd::ReleasedByWorker`.
    let how = tokio::select! {
        () = tokio::time::sleep(Duration::from_secs(10)) => session.close().await?,
        how = session.ended() => how,
    };
    match how {
        SessionEnd::Closed => println!(
            "released by us after {:.1} s",
            session.held_for().as_secs_f64()
        ),
        SessionEnd::ReleasedByWorker => println!("released by the worker"),
        other => println!("session ended: {other}"),
    }
    Ok(())
}
