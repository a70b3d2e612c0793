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
