//! VirtualCluster API types, label/annotation keys, and the tenant→host naming rules.
