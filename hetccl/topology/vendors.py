"""Accelerator vendors by PCI vendor id: the one table discovery uses to recognise a device.

A PCI function whose vendor id is listed here is reported as an accelerator if its class is a
display/3D controller or a processing accelerator, if the vendor makes nothing else, or if its
device id is one of the vendor's listed accelerators (a vendor id shared with other products,
like Baidu's). Each entry names where the id was checked. "pci.ids 2023.04.10" is the PCI ID
Repository snapshot Debian ships as package pci.ids 0.0~2023.04.11-1 (/usr/share/misc/pci.ids).
"""
from dataclasses import dataclass


@dataclass(frozen=True)
class Vendor:
    vendor_id: int
    name: str          # short name used in topology files and `hetccl topo`
    kind: str          # what the device is called by its vendor
    only_accelerators: bool   # the vendor id is used for nothing but accelerators
    source: str
    device_ids: frozenset = frozenset()   # accelerators by device id, whatever their class


VENDORS = {v.vendor_id: v for v in [
    Vendor(0x10de, "nvidia", "gpu", False, "pci.ids 2023.04.10 '10de NVIDIA Corporation'; Linux pci_ids.h PCI_VENDOR_ID_NVIDIA"),
    Vendor(0x1002, "amd", "gpu", False, "pci.ids 2023.04.10 '1002 Advanced Micro Devices, Inc. [AMD/ATI]'"),
    Vendor(0x19e5, "ascend", "npu", False, "pci.ids 2023.04.10 '19e5 Huawei Technologies Co., Ltd.'; Linux hinic3 "
                                           "driver PCI_VENDOR_ID_HUAWEI 0x19e5 (Huawei: NICs too)"),
    Vendor(0x1d94, "hygon", "dcu", False, "pci.ids 2023.04.10 '1d94 Chengdu Haiguang IC Design Co., Ltd.' (K100 AI = 6210)"),
    Vendor(0x1ed5, "mthreads", "gpu", True, "pci.ids 2023.04.10 '1ed5 Moore Threads Technology Co.,Ltd' "
                                            "(0100 MTT S10 ... 0121 MTT S1000M)"),
    Vendor(0xcabc, "cambricon", "mlu", True, "Cambricon's own OpenStack Cyborg VMLU driver (GuojianZhou/cyborg "
                                             "cyborg/accelerator/drivers/vmlu/base.py, 'Copyright 2020 Cambricon': "
                                             "VENDOR_MAPS = {'0xcabc': 'cambricon'}); not in pci.ids 2023.04.10"),
    Vendor(0x1e3e, "iluvatar", "gpu", True, "Linux (Phytium) pswiotlb.h BL_PCI_VENDOR_ID_ILUVATAR 0x1E3E; "
                                            "not in pci.ids 2023.04.10"),
    Vendor(0x9999, "metax", "gpu", True, "Linux (Phytium) pswiotlb.h BL_PCI_VENDOR_ID_METAX 0x9999; "
                                         "not in pci.ids 2023.04.10"),
    Vendor(0x1d22, "kunlunxin", "xpu", False, "pci.ids 2023.04.10 '1d22 Baidu Technology' (3684 Kunlun AI "
                                              "Accelerator, 3685 Kunlun2 AI Accelerator [VF]; 1380 is a storage device)",
           frozenset({0x3684, 0x3685})),
    Vendor(0x1e36, "enflame", "gcu", True, "pci.ids 2023.04.10 '1e36 Shanghai Enflame Technology Co. Ltd' "
                                           "(0001 T10 ... T21 [CloudBlazer])"),
]}

# PCI base classes of compute devices: 0x03 display (VGA 0x0300, 3D 0x0302), 0x12 processing accelerator
ACCELERATOR_CLASSES = (0x03, 0x12)


def accelerator_vendor(vendor_id: int, pci_class: int, device_id: int | None = None) -> Vendor | None:
    """The vendor if this PCI function (24-bit class code) is one of its accelerators, else None."""
    v = VENDORS.get(vendor_id)
    if v is None:
        return None
    if v.only_accelerators or (pci_class >> 16) in ACCELERATOR_CLASSES or device_id in v.device_ids:
        return v
    return None
