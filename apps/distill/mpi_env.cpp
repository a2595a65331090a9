// See mpi_env.hpp.
#include "mpi_env.hpp"

#include <cstdlib>
#include <string>

#include "distill/core/error.hpp"

#if defined(DISTILL_WITH_MPI)
#include <mpi.h>
#endif

namespace distill::app::mpi {

namespace {

int env_int(const char* a, const char* b) {
  for (const char* k : {a, b})
    if (const char* v = std::getenv(k); v && *v) return std::atoi(v);
  return -1;
}

#if defined(DISTILL_WITH_MPI)
struct Session {
  World w;
  Session() {
    int inited = 0;
    MPI_Initialized(&inited);
    if (!inited) MPI_Init(nullptr, nullptr);
    MPI_Comm_rank(MPI_COMM_WORLD, &w.rank);
    MPI_Comm_size(MPI_COMM_WORLD, &w.size);
  }
  ~Session() {
    int fin = 0;
    MPI_Finalized(&fin);
    if (!fin) MPI_Finalize();
  }
};
Session& session() {
  static Session s;
  return s;
}
#endif

}  // namespace

bool available() {
#if defined(DISTILL_WITH_MPI)
  return true;
#else
  return false;
#endif
}

World launched() { return {env_int("OMPI_COMM_WORLD_RANK", "PMI_RANK"), env_int("OMPI_COMM_WORLD_SIZE", "PMI_SIZE")}; }

World world() {
  const int size = launched().size;
  if (size <= 1) return {};
#if defined(DISTILL_WITH_MPI)
  return session().w;
#else
  throw Error("launched as " + std::to_string(size) +
              " processes (mpirun), but this build has no MPI: install an MPI (e.g. apt install libopenmpi-dev "
              "openmpi-bin) and rebuild, or run one process");
#endif
}

void allreduce_sum(std::span<float> v) {
#if defined(DISTILL_WITH_MPI)
  session();
  DISTILL_CHECK(MPI_Allreduce(MPI_IN_PLACE, v.data(), static_cast<int>(v.size()), MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD) ==
                    MPI_SUCCESS,
                "MPI_Allreduce of ", v.size(), " floats failed");
#else
  (void)v;
  throw Error("allreduce: this build has no MPI");
#endif
}

void allreduce_sum(std::span<double> v) {
#if defined(DISTILL_WITH_MPI)
  session();
  DISTILL_CHECK(MPI_Allreduce(MPI_IN_PLACE, v.data(), static_cast<int>(v.size()), MPI_DOUBLE, MPI_SUM,
                              MPI_COMM_WORLD) == MPI_SUCCESS,
                "MPI_Allreduce of ", v.size(), " doubles failed");
#else
  (void)v;
  throw Error("allreduce: this build has no MPI");
#endif
}

}  // namespace distill::app::mpi
