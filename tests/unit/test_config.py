"""Config precedence: defaults < config.yaml < drop-ins (with key+) < K3P_* env < flags."""

from __future__ import annotations

from pathlib import Path

import pytest

from k3p import config as cfg
from k3p.cli import load


def schema() -> cfg.OptionSchema:
    s = cfg.OptionSchema()
    cfg.add_core_options(s)
    return s


def layers(tmp_path: Path, main: str, dropins: dict[str, str]) -> list[tuple[str, dict]]:
    path = tmp_path / "config.yaml"
    path.write_text(main)
    d = tmp_path / "config.yaml.d"
    d.mkdir()
    for name, text in dropins.items():
        (d / name).write_text(text)
    return cfg.read_file_layers(cfg.config_files(path, True))


def test_each_source_overrides_the_one_before(tmp_path: Path) -> None:
    files = layers(
        tmp_path,
        "https-listen-port: 7000\ncluster-domain: file.local\nnode-label: [a=1]\ntls-san: [file]\n",
        {
            "20-b.yaml": "cluster-domain: dropin.local\nnode-label+: [c=3]\n",
            "10-a.yaml": "node-label+: [b=2]\ntls-san: [dropin]\n",
        },
    )
    env = {"K3P_CLUSTER_DOMAIN": "env.local", "K3P_CLUSTER_DNS": "10.43.0.99"}
    config = cfg.resolve("server", schema(), {"cluster_dns": "10.43.0.53"}, files, env)
    assert config.https_listen_port == 7000
    assert config.source("https-listen-port").endswith("config.yaml")
    # drop-ins apply alphabetically, and key+ appends to what came before
    assert config.node_label == ["a=1", "b=2", "c=3"]
    assert config.tls_san == ["dropin"]
    assert config.cluster_domain == "env.local"
    assert config.source("cluster_domain") == "environment variable K3P_CLUSTER_DOMAIN"
    assert config.cluster_dns == "10.43.0.53"
    assert config.source("cluster_dns") == "flag --cluster-dns"
    assert config.service_cidr == "10.43.0.0/16"
    assert config.source("service_cidr") == "default"


def test_lists_from_env_and_flags_split_on_commas(tmp_path: Path) -> None:
    config = cfg.resolve("server", schema(), {"disable": ["a,b", "c"]}, [], {"K3P_TLS_SAN": "x.example,10.0.0.1"})
    assert config.disable == ["a", "b", "c"]
    assert config.tls_san == ["x.example", "10.0.0.1"]


def test_unknown_key_is_reported_with_file_and_key(tmp_path: Path) -> None:
    files = layers(tmp_path, "no-such-option: 1\n", {"a.yaml": "other-unknown: x\n"})
    config = cfg.resolve("server", schema(), {}, files, {})
    assert any("'no-such-option'" in w and "config.yaml" in w for w in config.warnings)
    assert any("'other-unknown'" in w and "a.yaml" in w for w in config.warnings)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("https-listen-port: abc\n", "invalid value for https-listen-port in"),
        ("debug: maybe\n", "invalid value for debug in"),
        ("cluster-domain: [a, b]\n", "invalid value for cluster-domain in"),
        ("cluster-domain+: x\n", "'+' appends to lists"),
    ],
)
def test_wrong_types_name_the_option_and_file(tmp_path: Path, text: str, fragment: str) -> None:
    files = layers(tmp_path, text, {})
    with pytest.raises(cfg.ConfigError) as e:
        cfg.resolve("server", schema(), {}, files, {})
    assert fragment in str(e.value)
    assert str(tmp_path / "config.yaml") in str(e.value)
    assert "\n" not in str(e.value)


def test_wrong_type_in_env_names_the_variable() -> None:
    with pytest.raises(cfg.ConfigError, match="environment variable K3P_HTTPS_LISTEN_PORT"):
        cfg.resolve("server", schema(), {}, [], {"K3P_HTTPS_LISTEN_PORT": "x"})


def test_malformed_yaml_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("cluster-domain: ok\nnode-label: [a\n  b: c\n")
    with pytest.raises(cfg.ConfigError, match=r"malformed YAML in .*config.yaml:\d+"):
        cfg.read_file_layers([path])


def test_missing_named_config_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(cfg.ConfigError, match="does not exist"):
        cfg.config_files(tmp_path / "nope.yaml", explicit=True)
    assert cfg.config_files(tmp_path / "nope.yaml", explicit=False) == []


def test_config_file_found_from_flag_then_env(tmp_path: Path) -> None:
    assert cfg.config_file_location(["--config", "/x.yaml"], {}) == (Path("/x.yaml"), True)
    assert cfg.config_file_location([], {"K3P_CONFIG_FILE": "/y.yaml"}) == (Path("/y.yaml"), True)
    assert cfg.config_file_location([], {}) == (Path(cfg.DEFAULT_CONFIG_FILE), False)


def test_disable_is_known_before_plugins_load(tmp_path: Path) -> None:
    files = layers(tmp_path, "disable: [a]\n", {"x.yaml": "disable+: [b]\n"})
    names, where = cfg.early_disable_list("server", ["--disable", "c,d"], files, {})
    # flags replace what the files said, as for every other option
    assert names == ["c", "d"]
    names, where = cfg.early_disable_list("server", [], files, {})
    assert names == ["a", "b"]
    assert where["a"].endswith("x.yaml")


def test_unknown_flag_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "c.yaml").write_text("")
    with pytest.raises(cfg.ConfigError, match="unrecognized arguments: --nope"):
        load("server", ["--config", str(tmp_path / "c.yaml"), "--nope"])


def test_every_core_option_has_help() -> None:
    for opt in schema().options():
        assert opt.help, opt.name


def test_disable_aliases_name_installed_plugins_only(tmp_path: Path) -> None:
    """K3s's --disable-scheduler is --disable scheduler; a trimmed install has no alias of what it left out."""
    files = layers(tmp_path, "disable-controller-manager: true\n", {})
    names, where = cfg.early_disable_list("server", ["--disable-scheduler"], files, {},
                                          installed={"scheduler", "controller-manager"})
    assert names == ["scheduler", "controller-manager"]
    assert where["scheduler"] == "flag --disable-scheduler"
    # on agents only the proxy's alias exists
    names, _ = cfg.early_disable_list("agent", ["--disable-kube-proxy", "--disable-scheduler"], [], {},
                                      installed={"kube-proxy", "scheduler"})
    assert names == ["kube-proxy"]
    schema = cfg.OptionSchema()
    cfg.add_disable_aliases(schema, installed={"scheduler"})
    assert [o.name for o in schema.options()] == ["disable-scheduler"]
    names, _ = cfg.early_disable_list("server", ["--disable-kube-proxy"], [], {}, installed=set())
    assert names == []  # the full parse then rejects the unknown flag
