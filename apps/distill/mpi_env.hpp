// This process's place under mpirun, and the all-reduce that data-parallel training needs (mpi_env.cpp). MPI is
// started only when the process was launched by mpirun/mpiexec with more than one process (OpenMPI's or PMI's
// environment says so); a build without MPI then stops with an error saying how to get it.
#pragma once
#include <span>

namespace distill::app::mpi {

struct World {
  int rank = 0, size = 1;
};

// The rank and size the launcher (mpirun/mpiexec) put in the environment (OpenMPI's or PMI's variables), without
// starting MPI; -1 for what is not set. generate shards by these alone.
World launched();
// Initializes MPI on first use when launched with more than one process (MPI_Finalize runs at exit).
World world();
void allreduce_sum(std::span<float> v);
void allreduce_sum(std::span<double> v);
bool available();  // built with MPI

}  // namespace distill::app::mpi
