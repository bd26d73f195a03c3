"""Readers and writers: fastMRI HDF5, ISMRMRD HDF5, NIfTI, DICOM, weights."""
