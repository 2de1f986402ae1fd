//! The Docker Engine API, as far as naming a destination needs it: `GET /networks` and
//! `GET /containers/json` over the engine's unix socket, turned into a [`DockerView`],
//! and `GET /events`, which tells when to ask again.
//!
//! Requests go one per connection through hyper (see [`crate::http_client`]), on the
//! enricher's own thread, off the sample path.

use std::{collections::HashMap, net::IpAddr, path::Path, time::Duration};

use http_body_util::Full;
use hyper::{
    header::{ACCEPT, CONNECTION, HOST, USER_AGENT},
    Request,
};
use serde::Deserialize;
use tokio::{net::UnixStream, time::timeout};

use super::{EnrichError, Subnet};
use crate::http_client;

/// `GET /events` for what changes names and addresses: containers started, stopped,
/// removed or renamed, networks made, removed, joined or left (not exec or health
/// checks, which a busy host has many of). The JSON filter, percent-encoded:
/// `{"type":["container","network"],"event":["create","start","die","destroy","rename",
/// "connect","disconnect"]}`.
const EVENTS: &str = "/events?filters=%7B%22type%22%3A%5B%22container%22%2C%22network%22%5D%2C\
%22event%22%3A%5B%22create%22%2C%22start%22%2C%22die%22%2C%22destroy%22%2C%22rename%22%2C\
%22connect%22%2C%22disconnect%22%5D%7D";

/// Bound on one Docker API call (connect, request, whole response).
const DOCKER_TIMEOUT: Duration = Duration::from_secs(2);
/// Largest Docker API response accepted (a host with thousands of containers fits).
const DOCKER_MAX_RESPONSE: usize = 64 * 1024 * 1024;
/// The Docker network option naming the Linux bridge of a bridge network.
const BRIDGE_NAME_OPTION: &str = "com.docker.network.bridge.name";
/// The label Docker Compose puts on every container of a service.
const COMPOSE_SERVICE_LABEL: &str = "com.docker.compose.service";

/// A Docker network as far as naming is concerned.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DockerNetwork {
    /// The Linux bridge behind it (bridge driver only).
    pub bridge: Option<String>,
    pub subnets: Vec<Subnet>,
}

/// A container's address on one network.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    /// Container name without Docker's leading `/`.
    pub container: String,
    pub service: Option<String>,
    pub network: String,
}

/// Everything the Docker engine told us, indexed for lookups.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DockerView {
    /// By network name.
    pub networks: HashMap<String, DockerNetwork>,
    /// By container address.
    pub endpoints: HashMap<IpAddr, Endpoint>,
}

/// Networks and containers from the engine at `socket` (inside a runtime with timers).
pub(super) async fn query(socket: &Path) -> Result<DockerView, EnrichError> {
    const NETWORKS: &str = "/networks";
    const CONTAINERS: &str = "/containers/json";
    let networks = http_get(socket, NETWORKS).await?;
    let containers = http_get(socket, CONTAINERS).await?;
    docker_view(&networks, &containers)
}

/// The engine's open answer to [`EVENTS`]: a JSON line per event, for as long as the
/// engine runs. Only that something came matters (it is read and thrown away, so an
/// event costs no memory that stays).
pub(super) struct Events {
    body: hyper::body::Incoming,
}

impl Events {
    /// Asks the engine at `socket` for its events (inside a runtime: the connection is
    /// a task of it).
    pub(super) async fn open(socket: &Path) -> Result<Self, EnrichError> {
        let http = |what: String| EnrichError::DockerHttp {
            path: socket.to_owned(),
            uri: "/events",
            what,
        };
        let call = async {
            let stream =
                UnixStream::connect(socket)
                    .await
                    .map_err(|source| EnrichError::DockerIo {
                        path: socket.to_owned(),
                        source,
                    })?;
            let (mut sender, connection) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                    .await
                    .map_err(|error| http(error.to_string()))?;
            tokio::spawn(connection);
            let request = Request::get(EVENTS)
                .header(HOST, "docker")
                .header(USER_AGENT, "dropgate")
                .header(ACCEPT, "application/json")
                .body(Full::<bytes::Bytes>::default())
                .expect("a request of constant, valid parts");
            sender
                .send_request(request)
                .await
                .map_err(|error| http(error.to_string()))
        };
        // Only the head is waited for: the body is open for as long as the engine runs.
        let answer = timeout(DOCKER_TIMEOUT, call)
            .await
            .map_err(|_| http(format!("no answer within {DOCKER_TIMEOUT:?}")))??;
        if answer.status() != 200 {
            return Err(http(format!("status {}", answer.status())));
        }
        Ok(Self {
            body: answer.into_body(),
        })
    }

    /// Waits for the next piece of the stream: `true` for events, `false` once the
    /// stream ended (the engine stopped or restarted).
    pub(super) async fn next(&mut self) -> bool {
        use http_body_util::BodyExt as _;
        matches!(self.body.frame().await, Some(Ok(_)))
    }
}

/// Builds the view from the bodies of `GET /networks` and `GET /containers/json`.
pub fn docker_view(networks: &[u8], containers: &[u8]) -> Result<DockerView, EnrichError> {
    let networks: Vec<NetworkJson> =
        serde_json::from_slice(networks).map_err(|source| EnrichError::DockerJson {
            uri: "/networks",
            source,
        })?;
    let containers: Vec<ContainerJson> =
        serde_json::from_slice(containers).map_err(|source| EnrichError::DockerJson {
            uri: "/containers/json",
            source,
        })?;
    let mut view = DockerView::default();
    for net in networks {
        let options = net.options.unwrap_or_default();
        let bridge = (net.driver == "bridge").then(|| {
            options.get(BRIDGE_NAME_OPTION).cloned().unwrap_or_else(|| {
                // Docker's own naming for user-defined bridge networks.
                format!("br-{}", net.id.get(..12).unwrap_or(&net.id))
            })
        });
        let subnets = net
            .ipam
            .and_then(|ipam| ipam.config)
            .unwrap_or_default()
            .iter()
            .filter_map(|config| config.subnet.as_deref().and_then(Subnet::parse))
            .collect();
        view.networks
            .insert(net.name, DockerNetwork { bridge, subnets });
    }
    for container in containers {
        let Some(name) = container
            .names
            .unwrap_or_default()
            .first()
            .map(|n| n.trim_start_matches('/').to_owned())
        else {
            continue;
        };
        let service = container
            .labels
            .unwrap_or_default()
            .remove(COMPOSE_SERVICE_LABEL);
        let networks = container
            .network_settings
            .and_then(|s| s.networks)
            .unwrap_or_default();
        for (network, endpoint) in networks {
            let addresses = [endpoint.ip_address, endpoint.global_ipv6_address];
            for addr in addresses.iter().flatten().filter_map(|a| a.parse().ok()) {
                view.endpoints.insert(
                    addr,
                    Endpoint {
                        container: name.clone(),
                        service: service.clone(),
                        network: network.clone(),
                    },
                );
            }
        }
    }
    Ok(view)
}

/// One entry of `GET /networks` (only the fields we read).
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct NetworkJson {
    name: String,
    #[serde(default)]
    id: String,
    #[serde(default)]
    driver: String,
    #[serde(rename = "IPAM")]
    ipam: Option<IpamJson>,
    options: Option<HashMap<String, String>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct IpamJson {
    config: Option<Vec<IpamConfigJson>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct IpamConfigJson {
    subnet: Option<String>,
}

/// One entry of `GET /containers/json` (only the fields we read).
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ContainerJson {
    names: Option<Vec<String>>,
    labels: Option<HashMap<String, String>>,
    network_settings: Option<NetworkSettingsJson>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct NetworkSettingsJson {
    networks: Option<HashMap<String, EndpointJson>>,
}

#[derive(Deserialize)]
struct EndpointJson {
    #[serde(rename = "IPAddress")]
    ip_address: Option<String>,
    #[serde(rename = "GlobalIPv6Address")]
    global_ipv6_address: Option<String>,
}

/// `GET uri` on the Docker socket; the body of a 200 answer.
async fn http_get(socket: &Path, uri: &'static str) -> Result<Vec<u8>, EnrichError> {
    let http = |what: String| EnrichError::DockerHttp {
        path: socket.to_owned(),
        uri,
        what,
    };
    let call = async {
        let stream = UnixStream::connect(socket)
            .await
            .map_err(|source| EnrichError::DockerIo {
                path: socket.to_owned(),
                source,
            })?;
        let request = Request::get(uri)
            .header(HOST, "docker")
            .header(USER_AGENT, "dropgate")
            .header(ACCEPT, "application/json")
            .header(CONNECTION, "close")
            .body(Full::default())
            .expect("a request of constant, valid parts");
        http_client::exchange(stream, request, DOCKER_MAX_RESPONSE, DOCKER_TIMEOUT)
            .await
            .map_err(|error| http(error.to_string()))
    };
    let response = timeout(DOCKER_TIMEOUT, call)
        .await
        .map_err(|_| http(format!("no complete answer within {DOCKER_TIMEOUT:?}")))??;
    if response.status != 200 {
        return Err(http(format!(
            "status {} ({})",
            response.status, response.status_line
        )));
    }
    Ok(response.body)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("test address")
    }

    fn subnet(text: &str) -> Subnet {
        Subnet::parse(text).expect("test subnet")
    }

    /// Trimmed answers of dockerd 20.10 (`GET /networks`, `GET /containers/json`).
    const NETWORKS_JSON: &str = r#"[
      {"Name":"bridge","Id":"3f1c0e2a9b7d5e4f","Driver":"bridge",
       "IPAM":{"Driver":"default","Options":null,"Config":[{"Subnet":"172.17.0.0/16","Gateway":"172.17.0.1"}]},
       "Options":{"com.docker.network.bridge.default_bridge":"true","com.docker.network.bridge.name":"docker0"}},
      {"Name":"shop_default","Id":"9a8b7c6d5e4f3a2b1c0d","Driver":"bridge",
       "IPAM":{"Driver":"default","Options":null,"Config":[{"Subnet":"172.18.0.0/16","Gateway":"172.18.0.1"},{"Subnet":"fd00:18::/64"}]},
       "Options":{}},
      {"Name":"host","Id":"77","Driver":"host","IPAM":{"Driver":"default","Config":[]},"Options":{}},
      {"Name":"none","Id":"88","Driver":"null","IPAM":{"Driver":"default","Config":null},"Options":null}
    ]"#;

    const CONTAINERS_JSON: &str = r#"[
      {"Id":"aa","Names":["/web"],"Labels":{},"State":"running",
       "NetworkSettings":{"Networks":{"bridge":{"NetworkID":"3f1c","IPAddress":"172.17.0.2","GlobalIPv6Address":""}}}},
      {"Id":"bb","Names":["/shop-api-1"],"Labels":{"com.docker.compose.service":"api","com.docker.compose.project":"shop"},
       "NetworkSettings":{"Networks":{"shop_default":{"IPAddress":"172.18.0.3","GlobalIPv6Address":"fd00:18::3"}}}},
      {"Id":"cc","Names":["/hosty"],"Labels":null,
       "NetworkSettings":{"Networks":{"host":{"IPAddress":"","GlobalIPv6Address":""}}}}
    ]"#;

    fn fixture_view() -> DockerView {
        docker_view(NETWORKS_JSON.as_bytes(), CONTAINERS_JSON.as_bytes()).expect("fixture parses")
    }

    #[test]
    fn docker_json_becomes_networks_and_endpoints() {
        let view = fixture_view();
        assert_eq!(
            view.networks["bridge"],
            DockerNetwork {
                bridge: Some("docker0".into()),
                subnets: vec![subnet("172.17.0.0/16")],
            },
            "the default bridge is named by its option"
        );
        assert_eq!(
            view.networks["shop_default"].bridge.as_deref(),
            Some("br-9a8b7c6d5e4f"),
            "user-defined bridges are br-<first 12 of the id>"
        );
        assert_eq!(
            view.networks["shop_default"].subnets.len(),
            2,
            "v4 and v6 subnets"
        );
        assert_eq!(
            view.networks["host"].bridge, None,
            "only bridge networks have a bridge"
        );
        assert_eq!(
            view.endpoints[&ip("172.17.0.2")],
            Endpoint {
                container: "web".into(),
                service: None,
                network: "bridge".into(),
            },
            "the leading / of the name is dropped"
        );
        let api = Endpoint {
            container: "shop-api-1".into(),
            service: Some("api".into()),
            network: "shop_default".into(),
        };
        assert_eq!(
            view.endpoints[&ip("172.18.0.3")],
            api,
            "compose service label"
        );
        assert_eq!(view.endpoints[&ip("fd00:18::3")], api, "IPv6 address too");
        assert_eq!(view.endpoints.len(), 3, "empty addresses are skipped");
    }

    #[test]
    fn malformed_docker_json_is_an_error() {
        let err =
            docker_view(b"{}", CONTAINERS_JSON.as_bytes()).expect_err("an object, not a list");
        assert!(
            matches!(
                err,
                EnrichError::DockerJson {
                    uri: "/networks",
                    ..
                }
            ),
            "{err}"
        );
        let err = docker_view(NETWORKS_JSON.as_bytes(), b"[{\"Names\":7}]").expect_err("bad names");
        assert!(
            matches!(
                err,
                EnrichError::DockerJson {
                    uri: "/containers/json",
                    ..
                }
            ),
            "{err}"
        );
    }

    /// `GET /networks` on a socket whose server answers `raw`.
    fn docker_get(name: &str, raw: &'static [u8]) -> Result<Vec<u8>, EnrichError> {
        let (socket, server) = crate::http_client::test_server::unix(name, raw);
        let result = crate::http_client::block_on(http_get(&socket, "/networks"))
            .expect("a runtime for the call");
        server.join().expect("the test server ends");
        result
    }

    /// [`Events`] from a socket whose server answers `raw` and closes: whether it
    /// opened, then what each of two waits said.
    fn events_from(name: &str, raw: &'static [u8]) -> Result<(bool, bool), EnrichError> {
        let (socket, server) = crate::http_client::test_server::unix(name, raw);
        let result = crate::http_client::block_on(async {
            let mut events = Events::open(&socket).await?;
            let first = events.next().await;
            let second = events.next().await;
            Ok((first, second))
        })
        .expect("a runtime for the call");
        server.join().expect("the test server ends");
        result
    }

    #[test]
    fn the_event_stream_tells_of_events_and_of_its_end() {
        let event = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
            2f\r\n{\"Type\":\"container\",\"Action\":\"start\",\"id\":\"a\"}\n\r\n0\r\n\r\n";
        assert_eq!(events_from("event", event).expect("opens"), (true, false));
        let refused = b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n";
        let err = events_from("refused", refused).expect_err("a 404 opens nothing");
        assert!(err.to_string().contains("status 404"), "{err}");
    }

    #[test]
    fn http_bodies_by_length_chunks_or_close() {
        let cases: [(&str, &[u8], &[u8]); 4] = [
            (
                "content-length",
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n[]trailing",
                b"[]",
            ),
            (
                "chunked",
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\n[{}\r\n1;ext=1\r\n]\r\n0\r\n\r\n",
                b"[{}]",
            ),
            ("until close", b"HTTP/1.0 200 OK\r\nServer: x\r\n\r\n[1]", b"[1]"),
            ("empty body", b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", b""),
        ];
        for (name, raw, body) in cases {
            assert_eq!(docker_get(name, raw).expect(name), body, "{name}");
        }
    }

    #[test]
    fn bad_http_answers_are_errors() {
        let cases: [(&str, &[u8], &str); 5] = [
            (
                "not found",
                b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n",
                "status 404 (HTTP/1.1 404 Not Found)",
            ),
            (
                "no header end",
                b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n",
                "before message completed",
            ),
            (
                "cut short",
                b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n[]",
                "before message length reached",
            ),
            (
                "bad chunk",
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
                "chunk size",
            ),
            (
                "chunk missing",
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n[]",
                "before message length reached",
            ),
        ];
        for (name, raw, needle) in cases {
            let err = docker_get(name, raw).expect_err(name).to_string();
            assert!(
                err.contains("GET /networks") && err.contains(needle),
                "{name}: {err}"
            );
        }
    }

    #[test]
    fn a_missing_socket_is_an_io_error_naming_it() {
        let socket =
            std::env::temp_dir().join(format!("dropgate-no-docker-{}.sock", std::process::id()));
        let err = crate::http_client::block_on(http_get(&socket, "/networks"))
            .expect("a runtime for the call")
            .expect_err("nothing listens");
        assert!(matches!(err, EnrichError::DockerIo { .. }), "{err}");
        assert!(
            err.to_string().contains(&*socket.to_string_lossy()),
            "{err}"
        );
    }
}
