"""Accelerator vendors by PCI vendor id: the one table discovery uses to recognise a device.

A PCI function whose vendor id is listed here is reported as an accelerator (if its class is a
display/3D controller or a processing accelerator, or the vendor makes nothing else). Each entry
names where the id was checked; "issue 5" means the id comes from the project's issue and was not
found in the public sources searched (pci.ids extracts, Linux headers), so treat it as unconfirmed.
"""
from dataclasses import dataclass


@dataclass(frozen=True)
class Vendor:
    vendor_id: int
    name: str          # short name used in topology files and `hetccl topo`
    kind: str          # what the device is called by its vendor
    only_accelerators: bool   # the vendor id is used for nothing but accelerators
    source: str


VENDORS = {v.vendor_id: v for v in [
    Vendor(0x10de, "nvidia", "gpu", False, "pci.ids '10de NVIDIA Corporation'; Linux pci_ids.h PCI_VENDOR_ID_NVIDIA"),
    Vendor(0x1002, "amd", "gpu", False, "pci.ids '1002 Advanced Micro Devices, Inc. [AMD/ATI]'"),
    Vendor(0x19e5, "ascend", "npu", False, "Linux hinic3 driver PCI_VENDOR_ID_HUAWEI 0x19e5 (Huawei: NICs too)"),
    Vendor(0x1d94, "hygon", "dcu", False, "pci.ids '1d94 Chengdu Haiguang IC Design Co., Ltd.' (K100 AI = 6210)"),
    Vendor(0x1ed5, "mthreads", "gpu", True, "issue 5 (Moore Threads); not found in the sources searched"),
    Vendor(0xcabc, "cambricon", "mlu", True, "issue 5 (Cambricon); not found in the sources searched"),
    Vendor(0x1e3e, "iluvatar", "gpu", True, "Linux (Phytium) pswiotlb.h BL_PCI_VENDOR_ID_ILUVATAR 0x1E3E"),
    Vendor(0x9999, "metax", "gpu", True, "Linux (Phytium) pswiotlb.h BL_PCI_VENDOR_ID_METAX 0x9999"),
    Vendor(0x1d22, "kunlunxin", "xpu", True, "issue 5 (Kunlunxin / Baidu); not found in the sources searched"),
]}

# PCI base classes of compute devices: 0x03 display (VGA 0x0300, 3D 0x0302), 0x12 processing accelerator
ACCELERATOR_CLASSES = (0x03, 0x12)


def accelerator_vendor(vendor_id: int, pci_class: int) -> Vendor | None:
    """The vendor if this PCI function (24-bit class code) is one of its accelerators, else None."""
    v = VENDORS.get(vendor_id)
    if v is None:
        return None
    if v.only_accelerators or (pci_class >> 16) in ACCELERATOR_CLASSES:
        return v
    return None
