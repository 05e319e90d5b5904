import numpy as np
import pytest

from brainrecon.data import scenes as sc
from brainrecon.errors import InvalidInputError


@pytest.fixture(scope="module")
def many():
    return sc.make_scenes(500, image_size=48, seed=3)


def test_constants():
    assert len(sc.CATEGORIES) >= 8 and len(set(sc.CATEGORIES)) == len(sc.CATEGORIES)
    assert len(sc.COLOURS) >= 6
    rgb = np.array(list(sc.COLOURS.values()), float)
    d = np.linalg.norm(rgb[:, None] - rgb[None], axis=-1) + 1e9 * np.eye(len(rgb))
    assert d.min() > 60
    assert len(sc.BACKGROUND_PATTERNS) >= 4


def test_determinism_and_prefix():
    a = sc.make_scenes(70, image_size=32, seed=5)
    b = sc.make_scenes(70, image_size=32, seed=5)
    c = sc.make_scenes(70, image_size=32, seed=6)
    assert np.array_equal(a.images, b.images) and a.captions == b.captions
    assert not np.array_equal(a.images, c.images)
    p = sc.make_scenes(10, image_size=32, seed=5)
    assert np.array_equal(p.images, a.images[:10]) and p.captions == a.captions[:10]


def test_shapes_dtypes(many):
    n = len(many)
    assert many.images.shape == (n, 48, 48, 3) and many.images.dtype == np.uint8
    assert len(many.captions) == len(many.objects) == len(many.backgrounds) == n
    assert many.category.shape == many.colour.shape == many.n_objects.shape == (n,)
    assert many.bbox.shape == (n, 4)
    assert many.n_objects.min() == 1 and many.n_objects.max() == 3
    assert [len(o) for o in many.objects] == many.n_objects.tolist()
    assert many.image_size == 48
    s = sc.make_scenes(3, image_size=256, seed=0, max_objects=1)
    assert s.images.shape == (3, 256, 256, 3) and (s.n_objects == 1).all()


def test_every_category_and_colour_appears(many):
    cats = {o["category"] for objs in many.objects for o in objs}
    cols = {o["colour"] for objs in many.objects for o in objs}
    assert cats == set(sc.CATEGORIES) and cols == set(sc.COLOURS)
    assert set(many.category.tolist()) == set(range(len(sc.CATEGORIES)))
    assert set(many.colour.tolist()) == set(range(len(sc.COLOURS)))
    assert {b["pattern"] for b in many.backgrounds} == set(sc.BACKGROUND_PATTERNS)


def test_bbox_contains_object_pixels(many):
    for i in range(60):
        objs = many.objects[i]
        masks = sc.render_masks(objs, many.image_size)
        for o, m in zip(objs, masks):
            ys, xs = np.nonzero(m > 0)
            assert ys.size > 0
            x0, y0, x1, y1 = o["bbox"]
            assert xs.min() >= x0 and xs.max() < x1 and ys.min() >= y0 and ys.max() < y1
            # and the box is tight
            assert xs.min() == x0 and ys.max() + 1 == y1
        assert np.allclose(many.bbox[i], objs[0]["bbox"])


def test_object_colour_is_painted():
    s = sc.make_scenes(40, image_size=64, seed=1, max_objects=1)
    rgb = np.array(list(sc.COLOURS.values()), float)
    for i in range(len(s)):
        m = sc.render_masks(s.objects[i], 64)[0] > 0.99
        mean = s.images[i][m].astype(float).mean(0)
        assert np.argmin(np.linalg.norm(rgb - mean, axis=1)) == s.colour[i]


def test_captions_use_vocabulary_and_main_first(many):
    vocab = set(sc.vocabulary())
    assert sc.vocabulary() == sorted(vocab)
    for cap, objs in zip(many.captions, many.objects):
        words = cap.replace(",", " ,").split()
        assert set(words) <= vocab, set(words) - vocab
        sizes = [o["size"] for o in objs]
        assert sizes == sorted(sizes, reverse=True)
        main = f"{objs[0]['colour']} {objs[0]['category']}"
        assert cap.split(" ", 2)[2].startswith(main)
        assert cap.index(main) <= min(cap.index(f"{o['colour']} {o['category']}") for o in objs)


def test_caption_for():
    objs = [dict(category="star", colour="red", centre=(5.0, 5.0), size=20.0),
            dict(category="ring", colour="blue", centre=(60.0, 60.0), size=5.0)]
    cap = sc.caption_for(objs, dict(pattern="striped", colour="grey"), image_size=64)
    assert cap == ("a large red star at the top left and a small blue ring at the bottom right "
                   "on a striped grey background")


def test_subset(many):
    sub = many.subset([4, 2])
    assert len(sub) == 2 and np.array_equal(sub.images[1], many.images[2])
    assert sub.captions == [many.captions[4], many.captions[2]]
    assert len(many.subset(many.category == 0)) == int((many.category == 0).sum())
    with pytest.raises(InvalidInputError):
        many.subset([10_000])


def test_bad_arguments():
    with pytest.raises(InvalidInputError):
        sc.make_scenes(2, image_size=1000)
    with pytest.raises(InvalidInputError):
        sc.make_scenes(2, max_objects=0)


def test_plot_scenes(many):
    import matplotlib

    matplotlib.use("Agg")
    fig = sc.plot_scenes(many, n=6, ncols=3)
    assert len([a for a in fig.axes if a.images]) == 6
    import matplotlib.pyplot as plt

    plt.close(fig)


def test_swap_caption_word_changes_exactly_one_word_of_its_kind():
    caps = sc.make_scenes(40, image_size=32, seed=5).captions
    for attr, words in (("category", sc.CATEGORIES), ("colour", tuple(sc.COLOURS))):
        for which in ("main", "any"):
            new = sc.swap_caption_word(caps, attr, np.random.default_rng(0), which)
            for a, b in zip(caps, new):
                diff = [(x, y) for x, y in zip(a.split(), b.split()) if x != y]
                assert len(a.split()) == len(b.split()) and len(diff) == 1
                x, y = (w.rstrip(",") for w in diff[0])
                assert x in words and y in words and x != y
                if which == "main":      # the first word of that kind is the main object's
                    assert a.split().index(diff[0][0]) == min(i for i, w in enumerate(a.split())
                                                              if w.rstrip(",") in words)
    # "any" reaches other objects too; the replacement is uniform over the other words
    multi = [c for c in caps if c.count(",") >= 1] * 20
    new = sc.swap_caption_word(multi, "category", np.random.default_rng(1), "any")
    firsts = sum(a.split()[3] != b.split()[3] for a, b in zip(multi, new))
    assert 0 < firsts < len(multi)
    swapped = sc.swap_caption_word(["a large red star in the centre on a plain grey background"] * 900,
                                   "category", np.random.default_rng(2))
    counts = {w: sum(s.split()[3] == w for s in swapped) for w in sc.CATEGORIES}
    assert counts["star"] == 0 and min(v for k, v in counts.items() if k != "star") > 60
    assert sc.swap_caption_word(["on a plain grey background"], "colour", np.random.default_rng(0)) == \
        ["on a plain grey background"]                                     # background colours never swap
    with pytest.raises(InvalidInputError, match="attribute must be one of"):
        sc.swap_caption_word(caps, "size", np.random.default_rng(0))


def _places(caption):
    """The place phrases of a caption, in order (each object's phrase follows its category word)."""
    objs = caption.split(" on a ")[0].replace(" and ", ", ").split(", ")
    return [" ".join(o.split()[4:]) for o in objs]


def test_swap_caption_word_place_replaces_one_whole_place_phrase():
    caps = sc.make_scenes(60, image_size=32, seed=6).captions
    phrases = set(sc.PLACE_WORDS.values())
    for which in ("main", "any"):
        new = sc.swap_caption_word(caps, "place", np.random.default_rng(3), which)
        moved_other = 0
        for a, b in zip(caps, new):
            pa, pb = _places(a), _places(b)
            assert len(pa) == len(pb) and set(pb) <= phrases
            changed = [i for i, (x, y) in enumerate(zip(pa, pb)) if x != y]
            assert len(changed) == 1                                  # one phrase, and it changed
            assert a.split(" on a ")[1] == b.split(" on a ")[1]       # the background is untouched
            if which == "main":
                assert changed == [0]                                 # the main object's place
            moved_other += changed[0] > 0
        if which == "any":
            assert moved_other > 0
    # "at the top" is not mistaken for the start of "at the top left" (longest phrase first)
    out = sc.swap_caption_word(["a large red ring at the top left on a plain grey background"] * 200, "place",
                               np.random.default_rng(4))
    assert all(_places(o)[0] != "at the top left" for o in out)
    assert {_places(o)[0] for o in out} == phrases - {"at the top left"}


def test_poses_share_the_random_stream_and_centred_needs_one_object():
    from brainrecon.data.scenes import make_scenes

    rand = make_scenes(64, 32, seed=3, max_objects=1)
    up = make_scenes(64, 32, seed=3, max_objects=1, pose="upright")
    cen = make_scenes(64, 32, seed=3, max_objects=1, pose="centred")
    assert (rand.category == up.category).all() and (up.colour == cen.colour).all()
    assert [o[0]["centre"] for o in rand.objects] == [o[0]["centre"] for o in up.objects]
    assert all(o[0]["rotation"] == 0 for o in up.objects + cen.objects)
    assert all(o[0]["centre"] == (16.0, 16.0) and o[0]["size"] == 8.0 for o in cen.objects)
    assert all("in the centre" in c for c in cen.captions) and "pose" not in rand.meta
    placed = make_scenes(64, 32, seed=3, max_objects=1, pose="placed")
    sized = make_scenes(64, 32, seed=3, max_objects=1, pose="sized")
    assert all(o[0]["size"] == 8.0 and o[0]["rotation"] == 0 for o in placed.objects)
    xs = np.array([o[0]["centre"] for o in placed.objects])
    assert xs.min() >= 8.0 * 1.05 - 1e-6 and xs.max() <= 32 - 8.0 * 1.05 + 1e-6 and xs.std() > 3
    assert all(o[0]["centre"] == (16.0, 16.0) for o in sized.objects)
    assert [o[0]["size"] for o in sized.objects] == [o[0]["size"] for o in up.objects]
    grid = make_scenes(64, 32, seed=3, max_objects=1, pose="gridded")     # placed, snapped to the latent's cells
    gs = np.array([o[0]["centre"] for o in grid.objects])
    assert set(np.unique(gs)) == {12.0, 16.0, 20.0} and np.abs(gs - xs).max() <= 4.0
    assert (grid.category == placed.category).all()
    # one_size: the default world (several objects, rotations) with every main object at radius 0.25
    full, one = make_scenes(64, 32, seed=3), make_scenes(64, 32, seed=3, pose="one_size")
    assert (one.n_objects == full.n_objects).all() and (one.category == full.category).all()
    assert all(o[0]["size"] == 8.0 for o in one.objects) and len({o[0]["size"] for o in full.objects}) > 10
    assert [o[0]["rotation"] for o in one.objects] == [o[0]["rotation"] for o in full.objects]
    assert [o[1:] for o in one.objects] == [o[1:] for o in full.objects]          # the other objects as drawn
    assert one.meta["pose"] == "one_size"
    with pytest.raises(InvalidInputError, match="max_objects=1"):
        make_scenes(4, 32, pose="placed")
    with pytest.raises(InvalidInputError, match="max_objects=1"):
        make_scenes(4, 32, pose="centred")
    with pytest.raises(InvalidInputError, match="pose"):
        make_scenes(4, 32, pose="tilted")
