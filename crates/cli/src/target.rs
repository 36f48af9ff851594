//! Which engine a command talks to, and with which account key: the one
//! rule `nullworker endpoint`, `client` and `dispatch` share (docs/cli.md).
//!
//! `--instance NAME` or `--engine-url URL` (else `NULLWORKER_ENGINE_URL`,
//! else the local engine at http://127.0.0.1:8080); the key from
//! [`crate::key`]'s lookup, which also tries the local engine's own key when
//! the target is on this machine.

use nullworker_client::{ClientBuilder, Instance};

use crate::key::{read_engine_key, read_key_file, KeyLookup, KeySource, NoKey};

/// The resolved target: an SDK builder pointed at it, with the key.
pub struct Resolved {
    /// Builder with the key and the URLs set.
    pub builder: ClientBuilder,
    /// The account key.
    pub key: String,
    /// Where the key came from (for messages when it is refused).
    pub key_source: KeySource,
}

/// Resolves the target flags. `instance` and `engine_url` are exclusive
/// (clap refuses both); an explicit `--instance` beats
/// `NULLWORKER_ENGINE_URL`. `web_override` is a web API URL the caller
/// sets on the builder afterwards (`--webserver-url`): the key goes there,
/// so it decides whether the local engine's key may be used.
pub fn resolve(
    instance: Option<Instance>,
    engine_url: Option<String>,
    api_key: Option<String>,
    web_override: Option<&str>,
) -> Result<Resolved, NoKey> {
    let env_url = std::env::var("NULLWORKER_ENGINE_URL")
        .ok()
        .filter(|u| !u.is_empty());
    let (instance, url) = match (instance, engine_url.or(env_url)) {
        (Some(instance), _) => (Some(instance), None),
        (None, Some(url)) => (None, Some(url)),
        (None, None) => (Some(Instance::Local), None),
    };
    let local = key_goes_to_this_machine(web_override, url.as_deref(), instance);
    let (key, key_source) =
        KeyLookup::from_env(api_key, local).find(read_key_file, read_engine_key)?;
    let mut builder = nullworker_client::Client::builder(key.clone());
    if let Some(instance) = instance {
        builder = builder.instance(instance);
    }
    if let Some(url) = &url {
        builder = builder
            .autoscaler_url(url.clone())
            .webserver_url(url.clone());
    }
    Ok(Resolved {
        builder,
        key,
        key_source,
    })
}

/// Whether the web API the key is sent to is on this machine (then the
/// local engine's own key may be used): the override if any, else the
/// engine URL, else the instance.
fn key_goes_to_this_machine(
    web_override: Option<&str>,
    engine_url: Option<&str>,
    instance: Option<Instance>,
) -> bool {
    match (web_override, engine_url) {
        (Some(web), _) => is_loopback(web),
        (None, Some(url)) => is_loopback(url),
        (None, None) => instance == Some(Instance::Local),
    }
}

/// Whether `url`'s host is this machine (then the engine's own key is
/// looked for).
pub fn is_loopback(url: &str) -> bool {
    let Ok(parsed) = reqwest::Url::parse(url) else {
        return false;
    };
    match parsed.host_str() {
        Some("localhost") => true,
        Some(host) => host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback()),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_local_key_is_only_sent_to_this_machine() {
        let local = Some(Instance::Local);
        let prod = Some(Instance::Prod);
        let remote = Some("https://console.vast.ai");
        let here = Some("http://127.0.0.1:8080");
        for (web, engine, instance, expected) in [
            (None, None, local, true),
            (None, None, prod, false),
            (None, here, None, true),
            (None, remote, None, false),
            // --webserver-url decides: the key goes there.
            (remote, None, local, false),
            (remote, here, None, false),
            (here, None, prod, true),
        ] {
            assert_eq!(
                key_goes_to_this_machine(web, engine, instance),
                expected,
                "{web:?} {engine:?} {instance:?}"
            );
        }
    }

    #[test]
    fn loopback_targets_are_local() {
        for (url, local) in [
            ("http://127.0.0.1:8080", true),
            ("http://localhost:1", true),
            ("http://[::1]:1", true),
            ("https://console.vast.ai", false),
            ("not a url", false),
        ] {
            assert_eq!(is_loopback(url), local, "{url}");
        }
    }
}
