"""Feature extractors and weight loading: MedicalNet geometry against a functional reference of the
released network, checkpoint formats, checksums, missing-weight errors, InceptionV3 and LPIPS trunks."""
from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision

from bsynth_hpc.eval.features_inception import (
    InceptionExtractor,
    _FIDInceptionE2,
    extract_inception_features,
    load_inception,
)
from bsynth_hpc.eval.features_medicalnet import (
    MEDICALNET_ARCHS,
    MedicalNetExtractor,
    extract_medicalnet_features,
    load_medicalnet,
    zscore_volume,
)
from bsynth_hpc.nn.lpips import load_lpips
from bsynth_hpc.weights import WEIGHTS_ENV, WeightsError


@pytest.fixture(autouse=True)
def no_weights_dir(monkeypatch):
    monkeypatch.delenv(WEIGHTS_ENV, raising=False)


def random_medicalnet_state(depth: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """A state dict of the released network with random weights *and* random BatchNorm statistics."""
    torch.manual_seed(seed)
    state = MedicalNetExtractor(depth).backbone.state_dict()
    out = {}
    for k, v in state.items():
        if k.endswith("running_var"):
            out[k] = torch.rand_like(v) + 0.5
        elif k.endswith(("running_mean", "bias")):
            out[k] = 0.1 * torch.randn_like(v)
        elif k.endswith("num_batches_tracked"):
            continue  # absent in old releases
        elif v.ndim == 1:  # BatchNorm gamma
            out[k] = 1.0 + 0.1 * torch.randn_like(v)
        else:
            out[k] = v.clone()
    return out


def save_released_format(state: dict[str, torch.Tensor], path) -> None:
    """MedicalNet's release layout: DataParallel keys under "state_dict", plus the conv_seg head."""
    released = {f"module.{k}": v for k, v in state.items()}
    released["module.conv_seg.0.weight"] = torch.randn(32, 512, 3, 3, 3)
    released["module.conv_seg.4.weight"] = torch.randn(2, 32, 1, 1, 1)
    torch.save({"state_dict": released}, path)


def reference_medicalnet(sd: dict[str, torch.Tensor], x: torch.Tensor, depth: int) -> torch.Tensor:
    """Functional forward of Tencent MedicalNet's ResNet (basic blocks): conv1 stride 2, maxpool,
    layer2 stride 2, layer3/layer4 stride 1 with dilation 2/4, then global average pooling."""
    arch = MEDICALNET_ARCHS[depth]

    def bn(t, p):
        return F.batch_norm(t, sd[p + ".running_mean"], sd[p + ".running_var"], sd[p + ".weight"], sd[p + ".bias"],
                            False, 0.0, 1e-5)

    x = F.max_pool3d(F.relu(bn(F.conv3d(x, sd["conv1.weight"], stride=2, padding=3), "bn1")), 3, 2, 1)
    inplanes = 64
    for li, (planes, stride, dil) in enumerate(((64, 1, 1), (128, 2, 1), (256, 1, 2), (512, 1, 4))):
        for b in range(arch.layers[li]):
            p, s = f"layer{li + 1}.{b}", (stride if b == 0 else 1)
            out = F.relu(bn(F.conv3d(x, sd[p + ".conv1.weight"], stride=s, padding=dil, dilation=dil), p + ".bn1"))
            out = bn(F.conv3d(out, sd[p + ".conv2.weight"], padding=dil, dilation=dil), p + ".bn2")
            if b == 0 and (s != 1 or inplanes != planes):
                if arch.shortcut == "B":
                    res = bn(F.conv3d(x, sd[p + ".downsample.0.weight"], stride=s), p + ".downsample.1")
                else:
                    res = F.avg_pool3d(x, 1, s)
                    res = torch.cat([res, torch.zeros(res.shape[0], planes - res.shape[1], *res.shape[2:])], 1)
            else:
                res = x
            x = F.relu(out + res)
            inplanes = planes
    return x.mean(dim=(2, 3, 4))


@pytest.mark.parametrize("depth", [10, 18])
def test_medicalnet_features_equal_the_released_network(tmp_path, depth):
    state = random_medicalnet_state(depth)
    ckpt = tmp_path / f"resnet_{depth}_test.pth"
    save_released_format(state, ckpt)
    extractor, info = load_medicalnet(ckpt, depth)
    assert not info.random and info.sha256 == hashlib.sha256(ckpt.read_bytes()).hexdigest()
    assert info.verified == "unverified"
    x = torch.randn(2, 1, 20, 24, 18)
    with torch.no_grad():
        got = extractor(x)
        fmap = extractor.feature_map(x)
    np.testing.assert_allclose(got.numpy(), reference_medicalnet(state, x, depth).numpy(), rtol=1e-4, atol=1e-5)
    assert got.shape == (2, 512) and fmap.shape[2:] == (3, 3, 3)  # conv1, maxpool and layer2 halve each axis


def test_medicalnet_depth50_is_bottleneck_2048d():
    ex = MedicalNetExtractor(50).eval()
    assert ex.shortcut == "B" and ex.feature_dim == 2048
    with torch.no_grad():
        assert ex(torch.randn(1, 1, 16, 16, 16)).shape == (1, 2048)


def test_checkpoint_formats_and_checksums(tmp_path):
    state = random_medicalnet_state(10, seed=1)
    plain = tmp_path / "plain.pt"
    torch.save(state, plain)
    ex_plain, _ = load_medicalnet(plain, 10)
    released = tmp_path / "released.pth"
    save_released_format(state, released)
    digest = hashlib.sha256(released.read_bytes()).hexdigest()
    ex_rel, info = load_medicalnet(released, 10, sha256=digest)
    assert info.verified == "explicit"
    for (k, a), (_, b) in zip(ex_plain.state_dict().items(), ex_rel.state_dict().items()):
        if not k.endswith("num_batches_tracked"):
            torch.testing.assert_close(a, b)
    with pytest.raises(WeightsError, match="checksum"):
        load_medicalnet(released, 10, sha256="0" * 64)
    (tmp_path / "released.pth.sha256").write_text(f"{digest}  released.pth\n")
    assert load_medicalnet(released, 10)[1].verified == "sidecar"
    (tmp_path / "released.pth.sha256").write_text("f" * 64 + "\n")
    with pytest.raises(WeightsError, match="sidecar"):
        load_medicalnet(released, 10)
    # A file named like an official release but with other contents fails the pinned digest.
    fake_release = tmp_path / "resnet_10_23dataset.pth"
    save_released_format(state, fake_release)
    with pytest.raises(WeightsError, match="known-release"):
        load_medicalnet(fake_release, 10)


def test_wrong_architecture_and_missing_weights_are_clear_errors(tmp_path, monkeypatch):
    ckpt = tmp_path / "r10.pth"
    save_released_format(random_medicalnet_state(10), ckpt)
    with pytest.raises(WeightsError, match="do not fit.*--depth"):
        load_medicalnet(ckpt, 18)
    with pytest.raises(WeightsError, match=r"BSYNTH_WEIGHTS_DIR.*resnet_50_23dataset\.pth"):
        load_medicalnet(None, 50)
    with pytest.raises(WeightsError, match="do not exist"):
        load_medicalnet(tmp_path / "nope.pth", 10)
    ex, info = load_medicalnet(None, 10, allow_random=True)
    assert info.random and info.verified == "random-init"
    # Found through the weights directory (sub-folder named after the network).
    (tmp_path / "medicalnet").mkdir()
    save_released_format(random_medicalnet_state(18), tmp_path / "medicalnet" / "resnet_18.pth")
    monkeypatch.setenv(WEIGHTS_ENV, str(tmp_path))
    with pytest.raises(WeightsError, match="known-release"):  # random contents under the release name
        load_medicalnet(None, 18)
    (tmp_path / "medicalnet" / "resnet_18.pth").rename(tmp_path / "medicalnet" / "resnet_18_23dataset.pth.bak")
    with pytest.raises(WeightsError, match="no MedicalNet weights"):
        load_medicalnet(None, 18)


def test_features_are_invariant_to_intensity_scaling_through_the_zscore():
    torch.manual_seed(0)
    ex = MedicalNetExtractor(10).eval()
    v = np.random.default_rng(0).random((20, 24, 18)).astype(np.float32)
    z = zscore_volume(torch.from_numpy(v)[None])
    assert float(z.mean()) == pytest.approx(0.0, abs=1e-5) and float(z.std(unbiased=False)) == pytest.approx(1.0, 1e-4)
    f = extract_medicalnet_features(ex, [v, 2.5 * v + 3.0], batch_size=2)
    assert f.shape == (2, 512) and f.dtype == np.float64
    np.testing.assert_allclose(f[0], f[1], rtol=1e-3, atol=1e-5)


def test_inception_weights_pick_the_variant_and_load(tmp_path):
    tv = torchvision.models.inception_v3(weights=None, aux_logits=True, init_weights=False)
    tv_path = tmp_path / "tv_inception.pth"
    torch.save(tv.state_dict(), tv_path)
    ex, info = load_inception(tv_path)
    assert ex.variant == "torchvision" and "torchvision" in info.network
    torch.testing.assert_close(ex.net.Mixed_7c.branch_pool.conv.weight, tv.Mixed_7c.branch_pool.conv.weight)
    fid_state = {k: v for k, v in tv.state_dict().items() if not k.startswith(("AuxLogits", "fc."))}
    fid_state["fc.weight"], fid_state["fc.bias"] = torch.zeros(1008, 2048), torch.zeros(1008)
    fid_path = tmp_path / "pt_inception.pth"
    torch.save(fid_state, fid_path)
    ex_fid, info_fid = load_inception(fid_path)
    assert ex_fid.variant == "fid" and isinstance(ex_fid.net.Mixed_7c, _FIDInceptionE2)
    # The TF-FID Mixed_7c pools its pool branch with a max, not an average.
    block = ex_fid.net.Mixed_7c.eval()
    x = torch.randn(1, 2048, 8, 8)
    with torch.no_grad():
        got = block(x)[:, -192:]
        want = block.branch_pool(F.max_pool2d(x, 3, 1, 1))
    torch.testing.assert_close(got, want)
    slices = [np.random.default_rng(i).random((40, 48)).astype(np.float32) for i in range(3)]
    feats = extract_inception_features(ex_fid, slices, batch_size=2)
    assert feats.shape == (3, 2048) and np.isfinite(feats).all()
    with pytest.raises(WeightsError, match="filename-prefix"):
        bad = tmp_path / "inception_v3_google-0cc3c7bd.pth"
        torch.save(tv.state_dict(), bad)
        load_inception(bad)
    with pytest.raises(WeightsError, match="--inception-weights"):
        load_inception(None)
    assert isinstance(load_inception(None, allow_random=True)[0], InceptionExtractor)


def test_lpips_trunk_loads_from_a_local_torchvision_file(tmp_path):
    alex = torchvision.models.alexnet(weights=None)
    path = tmp_path / "alexnet.pth"
    torch.save(alex.state_dict(), path)
    model, info = load_lpips(path)
    assert not info.random
    torch.testing.assert_close(getattr(model.net.slice5, "10").weight, alex.features[10].weight)
    torch.testing.assert_close(getattr(model.net.slice1, "0").weight, alex.features[0].weight)
    named = tmp_path / "alexnet-owt-7be5be79.pth"  # torchvision's name carries its digest prefix
    torch.save(alex.state_dict(), named)
    with pytest.raises(WeightsError, match="7be5be79"):
        load_lpips(named)
    with pytest.raises(WeightsError, match="--lpips-weights"):
        load_lpips(None)
