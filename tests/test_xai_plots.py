"""Explanation figures: grid sizes of the saved PNGs and the arrays actually drawn."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.image  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from xplique.plots import generate_heatmap  # noqa: E402

from deel_lip.xai.counterfactuals import CounterfactualResult  # noqa: E402
from deel_lip.xai.plots import (  # noqa: E402
    plot_attributions,
    plot_counterfactuals,
    plot_explanations,
    plot_metric_table,
)


@pytest.fixture(scope="module")
def digits4(mnist_small):
    images, labels = mnist_small
    idx = np.array([0, 100, 200, 300])  # one 0, 1, 2 and 3
    return images[idx], labels[idx]


def _png_shape(path):
    return matplotlib.image.imread(path).shape[:2]


def test_explanation_grid_png_size_and_content(digits4, tmp_path):
    images, labels = digits4
    rng = np.random.default_rng(0)
    maps = {"saliency": rng.normal(size=images.shape), "gradcam": rng.normal(size=(4, 7, 7))}
    cf = np.clip(images + 0.3 * rng.normal(size=images.shape), 0, 1).astype("float32")
    path = tmp_path / "sub" / "grid.png"
    fig = plot_explanations(
        images,
        maps,
        cf,
        row_titles=[str(c) for c in labels],
        img_size=1.0,
        dpi=50,
        save_path=path,
    )
    assert path.exists()
    assert _png_shape(path) == (4 * 50, 5 * 50)  # 4 rows, input + 2 maps + cf + diff
    axes = np.array(fig.axes).reshape(4, 5)
    assert [ax.get_title() for ax in axes[0]] == [
        "input",
        "saliency",
        "gradcam",
        "counterfactual",
        "x' - x",
    ]
    assert [ax.get_ylabel() for ax in axes[:, 0]] == ["0", "1", "2", "3"]
    # column 1: the input under Xplique's heatmap of |saliency|
    expected = generate_heatmap(maps["saliency"][2].mean(-1), (28, 28), 0.5, True)
    np.testing.assert_allclose(axes[2, 1].images[-1].get_array(), expected, atol=1e-6)
    # the 7x7 map is resized to the image
    assert axes[1, 2].images[-1].get_array().shape == (28, 28)
    # last column: x' - x with symmetric limits
    diff = axes[3, 4].images[-1]
    np.testing.assert_allclose(diff.get_array(), (cf[3] - images[3])[..., 0], atol=1e-6)
    low, high = diff.get_clim()
    assert low == -high and high == pytest.approx(np.abs(cf[3] - images[3]).max())


def test_attribution_and_counterfactual_grids(digits4, tmp_path):
    images, _ = digits4
    fig = plot_attributions(
        images[:3], {"a": images[:3]}, img_size=1.0, dpi=40, save_path=tmp_path / "attr.png"
    )
    assert _png_shape(tmp_path / "attr.png") == (3 * 40, 2 * 40) and len(fig.axes) == 6
    # a constant map is shown as zeros instead of Xplique's 0/0
    fig = plot_attributions(images[:1], {"zero": np.zeros((1, 28, 28))})
    assert np.all(fig.axes[1].images[-1].get_array() == 0)
    result = CounterfactualResult(
        counterfactuals=1 - images,
        distances=np.ones(4),
        steps=np.ones(4, int),
        success=np.ones(4, bool),
        source=np.array([0, 1, 2, 3]),
        target=np.array([6, 7, 8, 9]),
        radius=np.zeros(4),
    )
    fig = plot_counterfactuals(images, result, img_size=1.2, dpi=50, save_path=tmp_path / "cf.png")
    assert _png_shape(tmp_path / "cf.png") == (4 * 60, 3 * 60)
    assert [ax.get_ylabel() for ax in fig.axes[::3]] == ["0 -> 6", "1 -> 7", "2 -> 8", "3 -> 9"]
    # RGB images keep their colours
    rgb = np.random.default_rng(1).uniform(size=(2, 16, 16, 3)).astype("float32")
    fig = plot_counterfactuals(rgb, rgb[::-1], dpi=30, img_size=1.0)
    assert fig.axes[1].images[0].get_array().shape == (16, 16, 3)


def test_metric_table(tmp_path):
    scores = {
        "OTNN saliency": {"MuFidelity": 0.15, "Deletion": 0.2},
        "CNN saliency": {"MuFidelity": float("nan"), "Sparseness": 0.5},
    }
    fig = plot_metric_table(scores, title="metrics", dpi=50, save_path=tmp_path / "t.png")
    height, width = _png_shape(tmp_path / "t.png")
    assert (height, width) == (round(0.35 * 4 * 50), round(1.4 * 5 * 50))
    table = fig.axes[0].tables[0]
    texts = {key: cell.get_text().get_text() for key, cell in table.get_celld().items()}
    assert [texts[(0, c)] for c in range(4)] == ["", "MuFidelity", "Deletion", "Sparseness"]
    assert [texts[(1, c)] for c in range(4)] == ["OTNN saliency", "0.150", "0.200", "-"]
    assert [texts[(2, c)] for c in range(4)] == ["CNN saliency", "nan", "-", "0.500"]


def test_bad_plot_inputs(digits4):
    images, _ = digits4
    with pytest.raises(ValueError, match="images must be a non-empty batch"):
        plot_attributions(images[0, ..., 0], {"a": images})
    with pytest.raises(ValueError, match=r"attributions\['a'\] must have shape"):
        plot_attributions(images, {"a": images[:2]})
    with pytest.raises(ValueError, match="at least one"):
        plot_attributions(images, {})
    with pytest.raises(ValueError, match="needs attributions, counterfactuals or both"):
        plot_explanations(images)
    with pytest.raises(ValueError, match="counterfactuals must have the shape of images"):
        plot_counterfactuals(images, images[:2])
    with pytest.raises(ValueError, match="row_titles must be a sequence of 4"):
        plot_counterfactuals(images, images, row_titles=["a"])
    with pytest.raises(ValueError, match="img_size must be a number > 0"):
        plot_counterfactuals(images, images, img_size=0)
    with pytest.raises(ValueError, match="scores must be a non-empty mapping"):
        plot_metric_table({})
