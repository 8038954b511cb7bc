"""UniSeg backbones in **stock** nnU-Net v2: the trained-model folder (official fixture logits through
``nnUNetPredictor``), the plan (normalisation maps checked with nnunetv2's own classes), whole-volume agreement of
the two predictors on a real scan, the ``nnUNetv2_predict`` CLI, and the pretrained checkpoint through nnunetv2's
``load_pretrained_weights`` on networks built from the exported plans."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from uniseg_hub import PreprocessingConfig, TaskSpec, UniSegBackbone, UniSegConfig, from_pretrained
from uniseg_hub.models.adapters import from_upstream
from uniseg_hub.cli import main
from uniseg_hub.demo.data import load_volume, nilearn_data_dir
from uniseg_hub.inference import sliding_window_inference
from uniseg_hub.interop import export_nnunetv2_pretrained, nnunetv2_plans, to_nnunetv2, to_plain_conv_unet
from uniseg_hub.interop.nnunetv2 import PLAIN_CONV_UNET, plain_conv_unet_architecture
from uniseg_hub.preprocessing import load_image, normalize, preprocess

from .conftest import REF, TINY_MODEL, max_abs

pytest.importorskip("nnunetv2")
pytestmark = pytest.mark.filterwarnings("ignore:.*torch.jit.*deprecated:FutureWarning")

ROOT = Path(__file__).resolve().parents[1]
DEMO = "uniseg-demo"  # registry name of the package-data demo weights
TISSUE = TaskSpec("tissue", 3, ["MR"], {"1": "grey matter", "2": "white matter"})


@pytest.fixture(scope="module")
def nnunet_env(tmp_path_factory):
    """nnU-Net's three folders as temporary ones (nnunetv2 reads them from the environment when used)."""
    root = tmp_path_factory.mktemp("nnunet")
    old = {k: os.environ.get(k) for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")}
    for k in old:
        (root / k).mkdir()
        os.environ[k] = str(root / k)
    yield {k: root / k for k in old}
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def _predictor(folder: Path, **kw):
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    p = nnUNetPredictor(device=torch.device("cpu"), allow_tqdm=False, **kw)
    p.initialize_from_trained_model_folder(str(folder), use_folds=(0,), checkpoint_name="checkpoint_final.pth")
    return p


@pytest.fixture(scope="module")
def official_down():
    with np.load(REF / "tiny_downstream_btcv_io.npz") as z:
        io = {k: z[k] for k in z.files}
    down = from_upstream(str(TINY_MODEL), num_classes=14, modalities=["CT"], task_name="btcv")
    with torch.no_grad():
        for u in range(5):
            down.decoder.heads[u].weight.copy_(torch.from_numpy(io[f"state/seg_outputs_down.{u}.weight"]))
    return down.eval(), io


def test_stock_predictor_reproduces_official_downstream_fixture(official_down, nnunet_env, tmp_path):
    down, io = official_down
    res = to_nnunetv2(down, tmp_path / "model", dataset_name="Dataset060_BTCV")
    assert res.max_abs_diff is not None and res.max_abs_diff <= 1e-4
    assert {p.name for p in (tmp_path / "model").iterdir()} == {"dataset.json", "plans.json", "fold_0"}
    p = _predictor(tmp_path / "model", use_mirroring=False)
    net = p.network
    assert f"{type(net).__module__}.{type(net).__name__}" == PLAIN_CONV_UNET  # stock class, built by nnunetv2
    with torch.no_grad():
        assert max_abs(net(torch.from_numpy(io["input"])), io["out"]) <= 1e-4
    ckpt = torch.load(res.checkpoint, weights_only=False)
    assert ckpt["trainer_name"] == "nnUNetTrainer" and ckpt["init_args"]["configuration"] == "3d_fullres"
    assert tuple(p.allowed_mirroring_axes) == (0, 1, 2)
    w = ckpt["network_weights"]
    zero = [k for k in w if (".transpconvs." in k or ".seg_layers." in k) and k.endswith(".bias")]
    assert len(zero) == 10 and all(not w[k].any() for k in zero)  # exact: UniSeg has no bias there
    # the plan comes from the config: spacing, patch, CT clip-rescale as CTNormalization, labels from the task
    plans = json.loads(res.plans[0].read_text())
    conf = plans["configurations"]["3d_fullres"]
    assert conf["spacing"] == down.config.preprocessing.spacing == [3.0, 1.5, 1.5]
    assert conf["patch_size"] == down.config.patch_size and conf["normalization_schemes"] == ["CTNormalization"]
    assert plans["foreground_intensity_properties_per_channel"]["0"] == {
        "mean": -325.0, "std": 650.0, "percentile_00_5": -325.0, "percentile_99_5": 325.0}
    ds = json.loads(res.dataset_json.read_text())
    assert ds["channel_names"] == {"0": "CT"} and sorted(ds["labels"].values()) == list(range(14))


def test_plain_conv_unet_decoder_kernel_mismatch_is_routed_around(official_down):
    """Stock PlainConvUNet's finest decoder stage takes the encoder's stage-0 kernel (1x3x3); UniSeg's is 3x3x3.
    The export widens the stage-0 kernel to 3x3x3 with zero taps, which leaves the outputs unchanged."""
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

    down, io = official_down
    cfg = down.config
    assert cfg.conv_kernel_sizes[0] == [1, 3, 3] and list(down.decoder.stages[-1].blocks[0].conv.kernel_size) == [3, 3, 3]
    arch = plain_conv_unet_architecture(cfg)
    naive = dict(arch["arch_kwargs"], kernel_sizes=cfg.conv_kernel_sizes)
    stock = get_network_from_plans(PLAIN_CONV_UNET, naive, arch["_kw_requires_import"], 1, 14)
    assert stock.decoder.stages[-1].convs[0].conv.kernel_size == (1, 3, 3)  # the mismatch, as installed
    assert arch["arch_kwargs"]["kernel_sizes"][0] == [3, 3, 3]
    net = to_plain_conv_unet(down, 1)
    w = net.encoder.stages[0][0].convs[1].conv.weight
    assert w.shape[2:] == (3, 3, 3) and not w[:, :, [0, 2]].any() and w[:, :, 1].abs().sum() > 0
    with torch.no_grad():
        assert max_abs(net(torch.from_numpy(io["input"])), io["out"]) <= 1e-4


def test_plan_normalisation_maps_onto_nnunetv2_classes():
    from nnunetv2.preprocessing.normalization.default_normalization_schemes import CTNormalization, ZScoreNormalization

    g = np.random.default_rng(0)
    ct = g.uniform(-1200, 2000, size=(1, 12, 20, 20)).astype(np.float32)
    mr = g.gamma(2.0, 300.0, size=(1, 12, 20, 20)).astype(np.float32)
    pre = PreprocessingConfig(spacing=[2.0, 1.0, 1.0], normalization={
        "CT": {"scheme": "clip_rescale", "low": -325, "high": 325}, "MR": {"scheme": "zscore"},
        "CTstats": {"scheme": "ct", "mean": 80.0, "sd": 120.0, "low": -150.0, "high": 400.0},
        "T1": {"scheme": "zscore", "use_nonzero_mask": True}})
    cfg = UniSegConfig.btcv(preprocessing=pre, base_num_features=2, patch_size=[32, 64, 64])
    plans = nnunetv2_plans(cfg, ["CT", "MR", "CTstats", "T1"], dataset_name="Dataset001_X")
    conf, props = plans["configurations"]["3d_fullres"], plans["foreground_intensity_properties_per_channel"]
    assert conf["normalization_schemes"] == ["CTNormalization", "ZScoreNormalization", "CTNormalization", "ZScoreNormalization"]
    assert conf["use_mask_for_norm"] == [False, False, False, True]
    theirs_ct = CTNormalization(use_mask_for_norm=False, intensityproperties=props["0"]).run(ct[0].copy())
    ours_ct = normalize(torch.from_numpy(ct), ["CT"], pre)[0].numpy()
    assert theirs_ct.min() == 0.0 and theirs_ct.max() == 1.0 and np.abs(theirs_ct - ours_ct).max() <= 1e-6
    theirs_mr = ZScoreNormalization(use_mask_for_norm=False, intensityproperties=props["1"]).run(mr[0].copy())
    assert np.abs(theirs_mr - normalize(torch.from_numpy(mr), ["MR"], pre)[0].numpy()).max() <= 1e-5
    theirs_stats = CTNormalization(use_mask_for_norm=False, intensityproperties=props["2"]).run(ct[0].copy())
    assert np.abs(theirs_stats - (np.clip(ct[0], -150, 400) - 80) / 120).max() <= 1e-5  # PreprocessingConfig's 'ct'


# ---------------------------------------------------------------------------------------------------------------
# A real scan: the MNI152 T1 at the demo's 3 mm, the demo UniSeg transferred with its tissue heads
# ---------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tissue_model():
    upstream = from_pretrained(str(DEMO))
    backbone = from_upstream(str(DEMO), strategy="official", task=TISSUE)
    with torch.no_grad():
        for head, up in zip(backbone.decoder.heads, upstream.decoder.heads):
            head.weight.copy_(up.weight[:3])
    return backbone.eval()


@pytest.fixture(scope="module")
def scan_3mm(tmp_path_factory):
    d = nilearn_data_dir()
    if d is None:
        pytest.skip("nilearn's bundled MNI152 is not installed")
    t1, affine = load_volume(d / "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz", 3.0)
    path = tmp_path_factory.mktemp("scan") / "mni_0000.nii.gz"
    nib.save(nib.Nifti1Image(np.ascontiguousarray(t1.transpose(2, 1, 0)), affine), str(path))
    return path


@pytest.fixture(scope="module")
def tissue_folder(tissue_model, nnunet_env):
    folder = nnunet_env["nnUNet_results"] / "Dataset501_Tissue" / "nnUNetTrainer__nnUNetPlans__3d_fullres"
    res = to_nnunetv2(tissue_model, folder, dataset_name="Dataset501_Tissue")
    assert res.max_abs_diff <= 1e-4 and res.widened_kernels == []
    return folder


@pytest.fixture(scope="module")
def stock_prediction(tissue_folder, scan_3mm):
    """Stock nnunetv2 on the scan (Gaussian, step 0.5, no mirroring): label map on the input grid."""
    img = load_image(scan_3mm)
    seg = _predictor(tissue_folder, use_mirroring=False).predict_single_npy_array(img.array, {"spacing": list(img.spacing)})
    return img, np.asarray(seg)


def test_whole_volume_agreement_with_stock_nnunetv2(tissue_model, stock_prediction):
    """The predictors differ by design: nnU-Net v2 averages window logits in float16 buffers (``torch.half``, on CPU
    too), ours averages float32 probabilities (UniSeg / nnU-Net v1) or, with ``apply_softmax=False``, float32 logits.
    Measured here (MNI152 at 3 mm, 64x78x66, no mirroring, the demo weights): 99.989% of labels agree with logit
    averaging, 99.710% with probability averaging; every logit-averaging disagreement is a near-tie (top-2 gap ≤ 0.003, about one
    float16 step at |logit| ≈ 6)."""
    img, seg = stock_prediction
    pre = preprocess(img, TISSUE.modalities, tissue_model.config.preprocessing)
    assert pre.data.shape[1:] == pre.cropped_shape  # already at the 3 mm target: no resampling on either side
    box = seg[tuple(slice(a, b) for a, b in pre.bbox)]
    assert seg.sum() == box.sum()  # nothing outside the nonzero box (same crop)
    kw = dict(roi_size=tissue_model.config.patch_size, sw_batch_size=2, predictor=tissue_model, overlap=0.5, mode="gaussian")
    logits = sliding_window_inference(pre.data, apply_softmax=False, **kw)
    probs = sliding_window_inference(pre.data, apply_softmax=True, **kw)
    labels_l, labels_p = logits.argmax(0).numpy(), probs.argmax(0).numpy()
    agree_l, agree_p = float((labels_l == box).mean()), float((labels_p == box).mean())
    assert len(np.unique(box)) == 3 and (box > 0).mean() > 0.2  # a real segmentation, not an empty map
    print(f"\nlabel agreement with stock nnU-Net v2: {agree_l:.5%} (logit averaging), {agree_p:.5%} (probabilities)")  # -s
    assert agree_l >= 0.9995, agree_l  # measured 0.99989
    assert 0.99 <= agree_p < agree_l, agree_p  # measured 0.99710
    top2 = torch.topk(logits, 2, dim=0).values
    gap = (top2[0] - top2[1]).numpy()[labels_l != box]
    assert gap.size == 0 or gap.max() <= 0.01, gap.max()  # near-ties only: float16 rounding


def test_nnunetv2_predict_cli_segments_a_real_scan(tissue_folder, scan_3mm, stock_prediction, nnunet_env, tmp_path):
    exe = Path(sys.executable).with_name("nnUNetv2_predict")
    if not exe.is_file():
        pytest.skip("nnUNetv2_predict console script not installed")
    inp = tmp_path / "in"
    inp.mkdir()
    shutil.copy(scan_3mm, inp / scan_3mm.name)
    env = {**os.environ, **{k: str(v) for k, v in nnunet_env.items()}, "nnUNet_def_n_proc": "1"}
    proc = subprocess.run([str(exe), "-i", str(inp), "-o", str(tmp_path / "out"), "-d", "501", "-c", "3d_fullres",
                           "-f", "0", "-device", "cpu", "--disable_tta", "-npp", "1", "-nps", "1",
                           "--disable_progress_bar"], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    src, out = nib.load(str(scan_3mm)), nib.load(str(tmp_path / "out" / "mni.nii.gz"))
    assert out.shape == src.shape and np.allclose(out.affine, src.affine, atol=1e-4)
    labels = np.asarray(out.dataobj).transpose(2, 1, 0)
    assert set(np.unique(labels)) == {0, 1, 2}
    assert np.array_equal(labels, stock_prediction[1])  # the CLI runs the same predictor as the API


# ---------------------------------------------------------------------------------------------------------------
# Fine-tuning with nnU-Net's own trainer: the pretrained checkpoint and its plans
# ---------------------------------------------------------------------------------------------------------------
def _trainer_network(plans_file: Path, configuration: str, dataset_json: dict):
    """The network ``nnUNetv2_train`` builds for ``configuration`` (the trainer's own builder, deep supervision on)."""
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    pm = PlansManager(str(plans_file))
    cm = pm.get_configuration(configuration)
    return nnUNetTrainer.build_network_architecture(
        pm, cm, determine_num_input_channels(pm, cm, dataset_json), pm.get_label_manager(dataset_json).num_segmentation_heads,
        enable_deep_supervision=True), cm


def _finest_decoder_features(net, x):
    feats = {}
    hook = net.decoder.stages[-1].register_forward_hook(lambda m, i, o: feats.setdefault("f", o))
    with torch.no_grad():
        net.eval()(x)
    hook.remove()
    return feats["f"]


def test_pretrained_checkpoint_through_nnunets_loader(nnunet_env, tmp_path):
    """Route 1 of docs/interop.md: UniSeg's plans moved onto a data set by nnunetv2's own tool; route 2: a
    configuration inheriting the data set's own 3d_fullres. Both networks take the checkpoint through
    ``load_pretrained_weights`` (heads skipped, every other key checked) and then compute UniSeg's features."""
    from nnunetv2.experiment_planning.plans_for_pretraining.move_plans_between_datasets import \
        move_plans_between_datasets
    from nnunetv2.run.load_pretrained_weights import load_pretrained_weights

    out = tmp_path / "pre"
    assert main(["export", "nnunetv2-pretrained", str(TINY_MODEL), str(out), "--channels", "1", "--modalities", "CT"]) == 0
    ckpt = out / "uniseg_pretrained.pth"
    pretrained = torch.load(ckpt, weights_only=False)["network_weights"]
    # the target data set: 5 classes (the heads are not transferred), one CT channel, in the nnU-Net raw layout
    raw = nnunet_env["nnUNet_raw"] / "Dataset502_Abdomen"
    (raw / "imagesTr").mkdir(parents=True)
    (raw / "labelsTr").mkdir()
    dataset_json = {"channel_names": {"0": "CT"}, "labels": {"background": 0, **{f"organ {i}": i for i in range(1, 5)}},
                    "numTraining": 1, "file_ending": ".nii.gz"}
    (raw / "dataset.json").write_text(json.dumps(dataset_json))
    ct = REF / "e2e" / "ct_t0_0000.nii.gz"
    shutil.copy(ct, raw / "imagesTr" / "case_0000.nii.gz")
    nib.save(nib.Nifti1Image(np.zeros(nib.load(str(ct)).shape, np.uint8), nib.load(str(ct)).affine), str(raw / "labelsTr" / "case.nii.gz"))
    # route 1: nnUNetv2_move_plans_between_datasets -s 998 -t 502 -sp UniSegPlans -tp UniSegPlans
    src = nnunet_env["nnUNet_preprocessed"] / "Dataset998_UniSegPretrained"
    src.mkdir()
    shutil.copy(out / "UniSegPlans.json", src)
    (nnunet_env["nnUNet_preprocessed"] / "Dataset502_Abdomen").mkdir()  # made by nnUNetv2_plan_and_preprocess -d 502
    move_plans_between_datasets(998, 502, "UniSegPlans", "UniSegPlans")
    moved = nnunet_env["nnUNet_preprocessed"] / "Dataset502_Abdomen" / "UniSegPlans.json"
    assert json.loads(moved.read_text())["dataset_name"] == "Dataset502_Abdomen"
    net, cm = _trainer_network(moved, "3d_fullres", dataset_json)
    assert cm.normalization_schemes == ["CTNormalization"] and cm.spacing == [3.0, 1.5, 1.5]
    before = {k: v.clone() for k, v in net.state_dict().items()}
    load_pretrained_weights(net, str(ckpt))
    after = net.state_dict()
    for k, v in after.items():
        if ".seg_layers." in k:
            assert v.shape[0] == 5 and torch.equal(v, before[k]), k  # skipped: the new data set's own heads
        else:
            assert torch.equal(v, pretrained[k]), k
    # the loaded network is the officially transferred UniSeg backbone (finest decoder features)
    backbone = from_upstream(str(TINY_MODEL), num_classes=4, in_channels=1).eval()
    x = torch.randn(1, 1, 32, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours = backbone.decoder.forward_features(backbone.encoder(x)[:-1], backbone.encoder(x)[-1])[-1]
    assert max_abs(_finest_decoder_features(net, x), ours) <= 1e-4
    # route 2: the data set's own plans get a configuration inheriting its 3d_fullres (own spacing, normalisation)
    theirs = json.loads(moved.read_text())
    theirs["plans_name"] = "nnUNetPlans"
    own = theirs["configurations"]["3d_fullres"]
    own.update(spacing=[2.5, 0.8, 0.8], normalization_schemes=["ZScoreNormalization"], data_identifier="nnUNetPlans_3d_fullres",
               patch_size=[48, 96, 96])
    own["architecture"]["arch_kwargs"].update(features_per_stage=[8, 16, 32, 64, 128, 128])
    plans_file = tmp_path / "nnUNetPlans.json"
    plans_file.write_text(json.dumps(theirs))
    unrelated, _ = _trainer_network(plans_file, "3d_fullres", dataset_json)
    with pytest.raises(AssertionError, match="shape"):  # the loader really checks: the data set's own network differs
        load_pretrained_weights(unrelated, str(ckpt))
    res = export_nnunetv2_pretrained(str(TINY_MODEL), tmp_path / "pre2", in_channels=1, modalities=["CT"],
                                     dataset_plans=plans_file)
    assert res.max_abs_diff <= 1e-4 and plans_file in res.plans
    net2, cm2 = _trainer_network(plans_file, "3d_fullres_uniseg", dataset_json)
    assert cm2.spacing == [2.5, 0.8, 0.8] and cm2.data_identifier == "nnUNetPlans_3d_fullres"  # inherited
    assert cm2.patch_size == [32, 64, 64]  # UniSeg's patch (multiple of its strides)
    load_pretrained_weights(net2, str(res.checkpoint))
    assert max_abs(_finest_decoder_features(net2, x), ours) <= 1e-4


def test_export_errors_are_one_line(official_down, tmp_path, capsys):
    assert main(["export", "nnunetv2", "--weights", str(TINY_MODEL), str(tmp_path / "a")]) == 1
    err = capsys.readouterr().err.strip()
    assert "prompt-driven UniSeg cannot become an nnU-Net v2 model" in err and "from_upstream" in err and "\n" not in err
    assert main(["export", "nnunetv2-pretrained", str(TINY_MODEL), str(tmp_path / "b")]) == 1
    assert "stems for [1, 2, 4] channels: say how many input channels" in capsys.readouterr().err
    assert main(["export", "nnunetv2-pretrained", str(TINY_MODEL), str(tmp_path / "c"), "--channels", "1"]) == 1
    assert "pass modalities=[...] (--modalities), 1 of ['CT', 'MR', 'PET']" in capsys.readouterr().err
    assert not (tmp_path / "b").exists() and not (tmp_path / "c").exists()  # nothing written on error
    assert main(["export", "onnx", str(TINY_MODEL), str(tmp_path / "d.onnx"), "--weights", str(TINY_MODEL)]) == 1
    assert "weights given twice" in capsys.readouterr().err
    assert main(["export", "nnunetv2", str(TINY_MODEL), str(tmp_path / "e"), "--task", "liver"]) == 1
    assert "--task applies to onnx/torchscript only" in capsys.readouterr().err
    down, _ = official_down
    with pytest.raises(ValueError, match="dataset_name must look like Dataset123_Name"):
        to_nnunetv2(down, tmp_path / "f", dataset_name="BTCV")
    bad = UniSegBackbone(UniSegConfig.btcv(base_num_features=2, patch_size=[16, 32, 32], input_channels=[1],
                                           norm=("group", {"num_groups": 1})))
    with pytest.raises(ValueError, match="norm 'group' has no nnU-Net v2 counterpart"):
        to_nnunetv2(bad, tmp_path / "g", modalities=["CT"])
