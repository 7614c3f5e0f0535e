pub mod v1 {
    tonic::include_proto!("automaldesc.v1");
}
