import pytest
import torch
from shapes_data import make_shapes_folder

torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    """A small folder data set of coloured shapes (tests/shapes_data.py), made once per test module."""
    return make_shapes_folder(tmp_path_factory.mktemp("shapes"))
