"""AWS access: credentials secret file, downloads and restore requests against moto."""

from __future__ import annotations

import pytest
from helpers import make_bag_zip

from glacier_sync import aws
from glacier_sync.errors import ConfigError, DownloadError
from glacier_sync.intake.sqs import receive_messages
from glacier_sync.settings import QueueSource, load_settings
from glacier_sync.transfer import object_download


def _queue(world, **extra) -> QueueSource:
    return QueueSource(**world.queue_entry(**extra))


@pytest.mark.unit
def test_credentials_file_sections(tmp_path):
    creds = tmp_path / "aws"
    creds.write_text(
        "[default]\naws_access_key_id = AKIADEFAULT\naws_secret_access_key = s1\n"
        "[prod]\naws_access_key_id = AKIAPROD\naws_secret_access_key = s2\n"
        "region_name = ap-northeast-2\n[broken]\naws_access_key_id = x\n"
    )
    settings = load_settings(aws_credentials_file=creds)
    prod = aws.profile_session(settings, "prod", "us-east-1")
    assert prod.get_credentials().access_key == "AKIAPROD"
    assert prod.region_name == "ap-northeast-2"
    default = aws.profile_session(settings, None, "us-east-1")
    assert default.get_credentials().access_key == "AKIADEFAULT"
    assert default.region_name == "us-east-1"
    with pytest.raises(ConfigError, match=r"no \[staging\] section.*default, prod, broken"):
        aws.profile_session(settings, "staging", "us-east-1")
    with pytest.raises(ConfigError, match="lacks aws_secret_access_key"):
        aws.profile_session(settings, "broken", "us-east-1")


@pytest.mark.unit
def test_without_file_the_normal_chain_is_used(tmp_path, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAFROMENV")
    settings = load_settings(aws_credentials_file=tmp_path / "none")
    assert aws.profile_session(settings, None, "eu-west-1").get_credentials().access_key == (
        "AKIAFROMENV"
    )


@pytest.mark.integration
def test_download_restored_then_skip_identical(world, tmp_path):
    zip_path = make_bag_zip(tmp_path, "W1DL")
    key = "Archive0/00/W1DL/W1DL.bag.zip"
    world.upload_archived(zip_path, key)
    s3 = world.client("s3")
    target = tmp_path / "incoming" / key
    with pytest.raises(DownloadError) as info:
        object_download.download_object(s3, world.bucket, key, "", target, "W1DL", 2, 5)
    assert "glacier-sync request-restore W1DL" in str(info.value)
    assert "InvalidObjectState" in str(info.value)
    assert not target.exists() and not list(target.parent.glob(".*part*"))
    world.restore(key)
    etag = s3.head_object(Bucket=world.bucket, Key=key)["ETag"].strip('"')
    assert (
        object_download.download_object(s3, world.bucket, key, etag, target, "W1DL", 2, 5) is True
    )
    assert target.read_bytes() == zip_path.read_bytes()
    assert (
        object_download.download_object(s3, world.bucket, key, etag, target, "W1DL", 2, 5) is False
    )
    target.write_bytes(b"truncated")
    assert (
        object_download.download_object(s3, world.bucket, key, etag, target, "W1DL", 2, 5) is True
    )
    assert target.read_bytes() == zip_path.read_bytes()


@pytest.mark.integration
def test_missing_object_and_changed_object(world, tmp_path):
    s3 = world.client("s3")
    with pytest.raises(DownloadError, match="does not exist"):
        object_download.download_object(
            s3, world.bucket, "A/W1X/W1X.bag.zip", "e", tmp_path / "x.zip", "W1X", 1, 5
        )
    s3.put_object(Bucket=world.bucket, Key="W1Y.bag.zip", Body=b"now")
    with pytest.raises(DownloadError, match="changed since the restore event"):
        object_download.download_object(
            s3, world.bucket, "W1Y.bag.zip", "0ld", tmp_path / "y.zip", "W1Y", 1, 5
        )


@pytest.mark.integration
def test_multipart_download_with_threads(world, tmp_path):
    data = bytes(range(256)) * (12 * 4096)  # 12 MiB: three 5 MiB parts
    s3 = world.client("s3")
    s3.put_object(Bucket=world.bucket, Key="big/W1BIG.bag.zip", Body=data)
    target = tmp_path / "W1BIG.bag.zip"
    assert object_download.download_object(
        s3, world.bucket, "big/W1BIG.bag.zip", "", target, "W1BIG", 4, 5
    )
    assert target.read_bytes() == data


@pytest.mark.integration
def test_request_restore_outcomes(world, tmp_path):
    zip_path = make_bag_zip(tmp_path, "W1RR")
    world.upload_archived(zip_path, "W1RR.bag.zip")
    s3 = world.client("s3")
    assert aws.request_restore(s3, world.bucket, "W1RR.bag.zip", 3, "Bulk") == "requested"
    with pytest.raises(DownloadError, match="does not exist"):
        aws.request_restore(s3, world.bucket, "nope.bag.zip", 3, "Bulk")


@pytest.mark.integration
def test_profile_clients_reach_the_emulator(world, tmp_path):
    settings = load_settings(
        aws_endpoint_url=world.endpoint, aws_credentials_file=tmp_path / "none"
    )
    sqs = aws.ProfileClients(settings).client("sqs", _queue(world))
    world.send_body('{"Records": []}')
    messages = receive_messages(sqs, _queue(world), limit=5, wait=0, visibility=30)
    bodies = [m.body for m in messages]
    assert '{"Records": []}' in bodies and "s3:TestEvent" in bodies[0]
    assert all(m.receive_count == 1 for m in messages)


@pytest.mark.unit
def test_a_client_keeps_a_connection_for_every_download_thread(tmp_path):
    """botocore keeps 10 connections: a download of more threads would open and drop one for
    every range. The pool follows ``download_concurrency``; a larger one set in an Airflow
    connection's ``config_kwargs`` is kept."""
    from botocore.config import Config

    settings = load_settings(download_concurrency=24, aws_credentials_file=tmp_path / "none")
    assert aws.pool_size(settings) == 24 + aws.PART_HEAD_THREADS
    assert aws.with_pool(settings).max_pool_connections == 32
    kept = aws.with_pool(settings, Config(max_pool_connections=50, read_timeout=7))
    assert (kept.max_pool_connections, kept.read_timeout) == (50, 7)
    raised = aws.with_pool(settings, Config(max_pool_connections=4, read_timeout=7))
    assert (raised.max_pool_connections, raised.read_timeout) == (32, 7)
    small = load_settings(download_concurrency=1, aws_credentials_file=tmp_path / "none")
    assert aws.with_pool(small).max_pool_connections == aws.BOTOCORE_POOL


@pytest.mark.integration
def test_a_download_of_sixteen_threads_drops_no_connection(world, tmp_path, caplog):
    """Through the pipeline's own client: no "Connection pool is full" from urllib3."""
    key = "Archive0/00/W1POOL/W1POOL.bag.zip"
    data = bytes(range(256)) * (20 * 4096)  # 20 MiB: twenty 1 MiB ranges
    plain = world.client("s3")
    plain.put_object(Bucket=world.bucket, Key=key, Body=data)
    settings = load_settings(
        aws_endpoint_url=world.endpoint,
        aws_credentials_file=tmp_path / "none",
        download_concurrency=16,
    )
    s3 = aws.ProfileClients(settings).client("s3", _queue(world))
    target = tmp_path / "W1POOL.bag.zip"
    etag = plain.head_object(Bucket=world.bucket, Key=key)["ETag"].strip('"')
    with caplog.at_level("WARNING", logger="urllib3"):
        assert object_download.download_object(s3, world.bucket, key, etag, target, "W1POOL", 16, 1)
    assert target.read_bytes() == data
    assert "Connection pool is full" not in caplog.text, caplog.text


@pytest.mark.airflow
def test_an_airflow_connections_client_keeps_its_config_and_gets_the_pool(tmp_path, monkeypatch):
    """In Airflow, the queue's connection gives the client: its ``config_kwargs`` stay, the
    pool grows to the download's threads."""
    import json

    extra = {
        "endpoint_url": "http://127.0.0.1:9",
        "config_kwargs": {"max_pool_connections": 12, "read_timeout": 9},
    }
    monkeypatch.setenv("AIRFLOW_CONN_S3POOL", json.dumps({"conn_type": "aws", "extra": extra}))
    monkeypatch.setenv("AIRFLOW_HOME", str(tmp_path / "airflow"))
    from glacier_sync_airflow.clients import HookClients

    settings = load_settings(download_concurrency=20, aws_credentials_file=tmp_path / "none")
    queue = QueueSource(
        name="pool", queue_url="http://127.0.0.1:9/1/q", region="us-east-1", aws_conn_id="s3pool"
    )
    config = HookClients(settings).client("s3", queue).meta.config
    assert (config.max_pool_connections, config.read_timeout) == (28, 9)
