"""score-SDE's DDPM++ cont. (sub-VP) on CIFAR-10 (configs/subvp/cifar10_ddpmpp_continuous.py): as the VP config with
the sub-VP SDE."""
from configs import cifar10_ddpmpp_cont


def get_config():
    config = cifar10_ddpmpp_cont.get_config()
    config.training.sde = "subvpsde"
    return config
